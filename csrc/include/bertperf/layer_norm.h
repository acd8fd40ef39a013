// layer_norm: y = LN(x + bias + residual) * gamma + beta over the last dimension.
//
// Shapes: x, residual, y: [rows, cols] contiguous, element type T (fp32, bf16; fp64 on the CPU);
// bias, gamma, beta: [cols] and mean, rstd: [rows], all in A = acc_t<T> (fp32 for fp32/bf16:
// the bindings upcast bf16 parameters, they are tiny).
// bias and residual may be null. The forward saves mean and rstd; the backward recomputes
// s = x + bias + residual from its inputs instead of storing s.
//
// Backward, per row with xhat = (s - mean) * rstd and g = dy * gamma:
//   ds = rstd * (g - mean(g) - xhat * mean(g * xhat))      (= dx = dresidual)
//   dgamma += dy * xhat,  dbeta += dy,  dbias += ds          (summed over rows)
#pragma once

#include "bertperf/common.h"

namespace bertperf {

template <typename A>
BP_HD A ln_rstd(A var, A eps) {
#if defined(__CUDA_ARCH__)
  return rsqrt(var + eps);
#else
  return A(1) / sqrt(var + eps);
#endif
}

template <typename A>
BP_HD A ln_xhat(A s, A mean, A rstd) {
  return (s - mean) * rstd;
}

template <typename A>
BP_HD A ln_output(A s, A mean, A rstd, A gamma, A beta) {
  return (s - mean) * rstd * gamma + beta;
}

// ds given g = dy * gamma, the row means mean_g = mean(g) and mean_gx = mean(g * xhat).
template <typename A>
BP_HD A ln_grad_input(A g, A xhat, A rstd, A mean_g, A mean_gx) {
  return rstd * (g - mean_g - xhat * mean_gx);
}

// ---- plain C API (implemented by cpu/layer_norm.cpp and cuda/layer_norm.cu) -------------------
struct LayerNormFwdArgs {
  const void* x;         // [rows, cols] T
  const void* residual;  // [rows, cols] T or null
  const void* bias;      // [cols] A or null
  const void* gamma;     // [cols] A
  const void* beta;      // [cols] A
  void* y;               // [rows, cols] T
  void* mean;            // [rows] A
  void* rstd;            // [rows] A
  int64_t rows, cols;
  double eps;
  int32_t dtype;         // DType of x, residual, y (CUDA: fp32 or bf16)
  int32_t num_threads;   // CPU only: OpenMP threads (the caller passes torch's setting)
};

struct LayerNormBwdArgs {
  const void* dy;        // [rows, cols] T
  const void* x;         // [rows, cols] T
  const void* residual;  // [rows, cols] T or null
  const void* bias;      // [cols] A or null
  const void* gamma;     // [cols] A
  const void* mean;      // [rows] A
  const void* rstd;      // [rows] A
  void* dx;              // [rows, cols] T (also the residual gradient)
  void* dgamma;          // [cols] A, overwritten
  void* dbeta;           // [cols] A, overwritten
  void* dbias;           // [cols] A, overwritten; null when bias is null
  float* workspace;      // CUDA only: bertperf_layer_norm_bwd_workspace_floats(rows, cols)
  int64_t rows, cols;
  int32_t dtype;
  int32_t num_threads;
};

#if !defined(__CUDACC__)
void layer_norm_fwd_cpu(const LayerNormFwdArgs& args);
void layer_norm_bwd_cpu(const LayerNormBwdArgs& args);
#endif

}  // namespace bertperf

extern "C" {
// CUDA launchers: `stream` is a cudaStream_t. Return 0 or a cudaError_t code.
int bertperf_layer_norm_fwd_cuda(const bertperf::LayerNormFwdArgs* args, void* stream);
int bertperf_layer_norm_bwd_cuda(const bertperf::LayerNormBwdArgs* args, void* stream);
int64_t bertperf_layer_norm_bwd_workspace_floats(int64_t rows, int64_t cols);
}
