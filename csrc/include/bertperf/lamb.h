// lamb: one NVLAMB optimizer step over a list of tensors (semantics: bertperf/optim/lamb.py).
//
// Per element, with fp32 math (g is the gradient, fp32 or bf16; p the fp32 master):
//   g' = clip * g;  m = b1 m + (1 - b1) g';  v = b2 v + (1 - b2) g'^2
//   u  = (m * inv_bc1) / (sqrt(v * inv_bc2) + eps) + wd * p
//   p  = p - step * u,  step = lr * ||p|| / ||u|| (lr if either norm is 0 or adaptation is off)
// A step is two passes per tensor: stage 1 updates m, v and sums p^2 and u^2; stage 2 recomputes
// u from the new m, v and writes p (and the bf16 parameter, rounded to nearest even). Bytes per
// fp32 element: 16 read + 8 written, then 12 read + 4 written (the CPU runs stage 2 of a tensor
// right after its stage 1, last chunks first, so a part of it still comes from the cache), plus
// the 4-byte gradient read of the global norm (lamb_sq_norms) before the step.
//
// Work is cut into chunks of kLambChunk elements of one tensor (a CUDA block, a CPU work item).
// Per-chunk partial sums are fp64 and each tensor's norm is the in-order fp64 sum of its chunks'
// partials, so norms do not depend on the thread count and the split API (update_moments, then
// apply_update with the caller's step sizes) gives bit-identical results to the fused step.
#pragma once

#include "bertperf/common.h"

namespace bertperf {

// Elements per chunk; the chunk layout of a tensor list is part of the C API (chunk_start).
constexpr int64_t kLambChunk = 16384;
// CPU: elements summed in fp32 vector lanes before the partial sum moves to fp64.
constexpr int64_t kLambSubBlock = 256;

// Constants of one step, shared by all tensors of the list (host-computed).
struct LambScalars {
  float beta1, beta2;
  float one_minus_beta1, one_minus_beta2;
  float clip;          // gradient multiplier of global-norm clipping (1 = none)
  float inv_bc1, inv_bc2;  // 1 / (1 - beta^t), or 1 without bias correction
  float eps;
  float weight_decay;
  double lr;           // fused step only
  int32_t adapt;       // fused step only: 1 = trust ratio, 0 = ratio 1
};

BP_HD float lamb_sqrt(float x) {
#if defined(__CUDA_ARCH__)
  return __fsqrt_rn(x);  // IEEE even under --use_fast_math, as on the CPU
#else
  return sqrtf(x);
#endif
}

BP_HD float lamb_div(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}

// Stage 1 moments, in place: g is the raw gradient in fp32.
BP_HD void lamb_moments(const LambScalars& s, float g, float& m, float& v) {
  const float gc = g * s.clip;
  m = s.beta1 * m + s.one_minus_beta1 * gc;
  v = s.beta2 * v + s.one_minus_beta2 * (gc * gc);
}

// The update direction u from the (new) moments and the master value p.
BP_HD float lamb_update(const LambScalars& s, float p, float m, float v) {
  return lamb_div(m * s.inv_bc1, lamb_sqrt(v * s.inv_bc2) + s.eps) + s.weight_decay * p;
}

// lr * trust ratio from the squared norms (fp64, same expression as the Python trust_ratios).
BP_HD double lamb_step_size(double lr, int32_t adapt, double p_sq, double u_sq) {
  return (adapt && p_sq > 0.0 && u_sq > 0.0) ? sqrt(p_sq / u_sq) * lr : lr;
}

BP_HD int64_t lamb_chunks(int64_t numel) { return (numel + kLambChunk - 1) / kLambChunk; }

// The tensor that owns chunk c: chunk_start[i] <= c < chunk_start[i + 1] (binary search).
BP_HD int64_t lamb_owner(const int64_t* chunk_start, int64_t n, int64_t c) {
  int64_t lo = 0, hi = n - 1;
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (chunk_start[mid] <= c)
      lo = mid;
    else
      hi = mid - 1;
  }
  return lo;
}

// ---- plain C API (implemented by cpu/lamb.cpp and cuda/lamb.cu) --------------------------------
// n tensors as arrays of raw pointers: host arrays for the CPU, device arrays for CUDA.
struct LambTensors {
  int64_t n;
  void* const* master;          // [n] fp32, updated in place (the parameter itself if fp32)
  const void* const* grad;      // [n] grad_dtype
  void* const* exp_avg;         // [n] fp32, updated in place
  void* const* exp_avg_sq;      // [n] fp32, updated in place
  void* const* param;           // [n] bf16 parameters rewritten from the master, or null
  const int64_t* numel;         // [n] elements of tensor i (all five agree)
  const int64_t* chunk_start;   // [n + 1] prefix sums of lamb_chunks(numel[i])
  int64_t chunks;               // chunk_start[n], as a host value
  int32_t grad_dtype;           // kFloat32 or kBFloat16
};

struct LambArgs {
  LambTensors t;
  LambScalars s;
  double* sq_norms;             // update_moments: out [n, 2] (sum p^2, sum u^2)
  const double* step_sizes;     // apply_update: in [n] (lr * trust ratio)
  double* workspace;            // CUDA only: lamb_workspace_doubles(n, chunks) doubles
  int32_t num_threads;          // CPU only: OpenMP threads (the caller passes torch's setting)
};

// Sum of squares of each of n tensors of `dtype` (kFloat32 or kBFloat16) into out [n].
struct LambSqNormArgs {
  const void* const* x;         // [n]
  const int64_t* numel;         // [n]
  const int64_t* chunk_start;   // [n + 1]
  int64_t n;
  int64_t chunks;               // chunk_start[n], as a host value
  int32_t dtype;
  double* out;                  // [n]
  double* workspace;            // CUDA only: lamb_workspace_doubles(n, chunks) doubles
  int32_t num_threads;
};

#if !defined(__CUDACC__)
void lamb_sq_norms_cpu(const LambSqNormArgs& args);
void lamb_update_moments_cpu(const LambArgs& args);
void lamb_apply_update_cpu(const LambArgs& args);
void lamb_step_cpu(const LambArgs& args);
#endif

}  // namespace bertperf

extern "C" {
// CUDA launchers: `stream` is a cudaStream_t; all pointers (also inside the structs) are device
// pointers. Return 0 or a cudaError_t code. lamb_step_cuda leaves the step sizes in the
// workspace, so the host never waits.
int64_t bertperf_lamb_workspace_doubles(int64_t n, int64_t chunks);
int bertperf_lamb_sq_norms_cuda(const bertperf::LambSqNormArgs* args, void* stream);
int bertperf_lamb_update_moments_cuda(const bertperf::LambArgs* args, void* stream);
int bertperf_lamb_apply_update_cuda(const bertperf::LambArgs* args, void* stream);
int bertperf_lamb_step_cuda(const bertperf::LambArgs* args, void* stream);
}
