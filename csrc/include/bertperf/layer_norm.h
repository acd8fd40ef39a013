// layer_norm: y = LN(x + bias + residual) * gamma + beta over the last dimension.
//
// Shapes: x, residual, y: [rows, cols] contiguous, element type T (fp32, bf16; fp64 on the CPU);
// bias, gamma, beta: [cols] and mean, rstd: [rows], all in A = acc_t<T> (fp32 for fp32/bf16:
// the bindings upcast bf16 parameters, they are tiny).
// bias and residual may be null. The forward saves mean and rstd; nothing of size [rows, cols]
// beyond the inputs and the output is kept. The backward gets xhat one of two ways:
//   * from the output (fp32/fp64, when the caller passes y and beta and every column is
//     invertible, see ln_output_invertible): xhat = (y - beta) / gamma. It then reads dy and y
//     only: 3 passes over [rows, cols] (dy, y in; dx out) instead of 4;
//   * by recomputing s = x + bias + residual (bf16, and whenever a gamma is ~0 or tiny next to
//     its beta, where y no longer determines xhat): reads dy, x and residual.
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

// A column's output y = xhat * gamma + beta gives back xhat = (y - beta) / gamma to within
// 2^-p (|xhat| + |beta / gamma|) for a p-bit y (p = 24 in fp32): as accurate as recomputing s
// (2^-p (|xhat| + |mean| rstd)) as long as |beta| <= kLnMaxBetaOverGamma |gamma|. The check
// also rejects gamma below 1e-30 (y would lose bits as a denormal) and NaN (comparisons false).
constexpr float kLnMaxBetaOverGamma = 16.0f;

template <typename A>
BP_HD bool ln_output_invertible(A gamma, A beta) {
  const A ag = gamma < A(0) ? -gamma : gamma;
  const A ab = beta < A(0) ? -beta : beta;
  return ag >= A(1e-30) && ab <= A(kLnMaxBetaOverGamma) * ag;
}

template <typename A>
BP_HD A ln_xhat_from_output(A y, A beta, A inv_gamma) {
  return (y - beta) * inv_gamma;
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
  // Optional (both or neither): the forward's output [rows, cols] T and beta [cols] A. When given
  // and ln_output_invertible holds for every column, the CPU backward takes xhat from y (and does
  // not read x, residual, bias or mean); otherwise, and always on CUDA, it recomputes s.
  const void* y;
  const void* beta;
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
