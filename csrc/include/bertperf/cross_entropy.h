// cross_entropy: a classifier's bias add, softmax cross-entropy, accuracy and logits gradient in
// one pass per row (the MLM head over a 30522-word vocabulary is the case it is made for).
//
// Shapes: x, y, grad: [rows, cols] contiguous, element type T (fp32, bf16; fp64 on the CPU);
// bias, dbias: [cols] in A = acc_t<T>; bias may be null (then y is not written: the caller's
// logits are x); labels: [rows] int64, each in [0, cols); loss: [rows] A; correct: [rows] uint8.
// Per row r, with z = x[r] + bias and m = max_j z_j:
//   y[r]       = z                                          (the logits, biased)
//   lse        = m + log(sum_j exp(z_j - m))
//   loss[r]    = lse - z[label]
//   correct[r] = z[label] == m                              (ties with the maximum count as correct)
//   grad[r, j] = scale * (exp(z_j - lse) - [j == label])    (d sum_r loss[r] / dz, times scale)
//   dbias      = sum_r grad[r]                              (the bias gradient, same scale)
// Bytes per row: read x, write y and grad (3 passes); the row is staged in fp32 scratch, which is
// L2-resident for a BERT vocabulary (30522 x 4 B = 122 KB), so the max, the sum and the outputs
// are computed from it rather than from memory.
#pragma once

#include "bertperf/common.h"

namespace bertperf {

// exp(z - lse): the softmax probability of a logit given the row's log-sum-exp (z - lse <= 0).
template <typename A>
BP_HD A ce_prob(A z, A lse) {
  return fast_exp_nonpositive(z - lse);
}

// The gradient of the summed loss w.r.t. one logit, times scale.
template <typename A>
BP_HD A ce_grad(A prob, bool is_label, A scale) {
  return scale * (is_label ? prob - A(1) : prob);
}

struct CrossEntropyFwdArgs {
  const void* x;        // [rows, cols] T
  const void* bias;     // [cols] A or null
  const int64_t* labels;  // [rows]
  void* y;              // [rows, cols] T (written when bias is given)
  void* grad;           // [rows, cols] T
  void* loss;           // [rows] A
  uint8_t* correct;     // [rows]
  void* dbias;          // [cols] A, overwritten; null when bias is null
  int64_t rows, cols;
  double scale;         // multiplies grad and dbias (e.g. 1 / rows for a mean loss)
  int32_t dtype;
  int32_t num_threads;  // CPU only
};

#if !defined(__CUDACC__)
void cross_entropy_fwd_cpu(const CrossEntropyFwdArgs& args);
#endif

}  // namespace bertperf

extern "C" {
// CUDA launcher: `stream` is a cudaStream_t. Returns 0 or a cudaError_t code.
int bertperf_cross_entropy_fwd_cuda(const bertperf::CrossEntropyFwdArgs* args, void* stream);
}
