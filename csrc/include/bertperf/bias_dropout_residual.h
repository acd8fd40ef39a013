// bias_dropout_residual: y = residual + dropout(x + bias, p), in one pass (as DeepSpeed's
// transformer kernel does after the attention-output and FFN-output GEMMs).
//
// Shapes: x, residual, y, dy, dx: [rows, cols] contiguous, element type T (fp32, bf16; fp64 on
// the CPU); bias, dbias: [cols] in A = acc_t<T>, may be null. Dropout keeps element i (flat index
// row * cols + col) iff dropout_hash(seed, i) >= threshold and scales kept elements by
// 1 / (1 - p); the backward regenerates the mask from the seed, so nothing is stored:
//   dx = dy * factor(i),  dresidual = dy (the bindings return dy itself),  dbias = sum_rows dx.
// Flat indices are taken modulo 2^32: tensors beyond 4G elements reuse mask bits.
#pragma once

#include "bertperf/common.h"

namespace bertperf {

template <typename A>
BP_HD A bdr_output(A x, A bias, A residual, A factor) {
  return residual + (x + bias) * factor;
}

struct BiasDropoutResidualFwdArgs {
  const void* x;         // [rows, cols] T
  const void* bias;      // [cols] A or null
  const void* residual;  // [rows, cols] T
  void* y;               // [rows, cols] T
  int64_t rows, cols;
  DropoutParams drop;
  int32_t dtype;
  int32_t num_threads;
};

struct BiasDropoutResidualBwdArgs {
  const void* dy;  // [rows, cols] T
  void* dx;        // [rows, cols] T
  void* dbias;     // [cols] A, overwritten; null if there is no bias
  int64_t rows, cols;
  DropoutParams drop;
  int32_t dtype;
  int32_t num_threads;
};

#if !defined(__CUDACC__)
void bias_dropout_residual_fwd_cpu(const BiasDropoutResidualFwdArgs& args);
void bias_dropout_residual_bwd_cpu(const BiasDropoutResidualBwdArgs& args);
#endif

}  // namespace bertperf

extern "C" {
int bertperf_bias_dropout_residual_fwd_cuda(const bertperf::BiasDropoutResidualFwdArgs* args,
                                            void* stream);
int bertperf_bias_dropout_residual_bwd_cuda(const bertperf::BiasDropoutResidualBwdArgs* args,
                                            void* stream);
}
