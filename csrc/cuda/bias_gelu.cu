// bias_gelu CUDA kernels over bertperf/bias_gelu.h. Torch-free; plain C launch API.
// Forward and dx: grid-stride elementwise. dbias: a second kernel, one thread per column summing
// dx down the rows (coalesced across the warp); it re-reads dx, which keeps both kernels simple.
#include "bertperf/bias_gelu.h"
#include "cuda_common.cuh"

namespace bertperf {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float gelu_any(float v, int approx) {
  return approx == kGeluTanh ? gelu_tanh(v) : gelu_erf(v);
}

__device__ __forceinline__ float gelu_grad_any(float v, int approx) {
  return approx == kGeluTanh ? gelu_tanh_grad(v) : gelu_erf_grad(v);
}

template <typename T>
__global__ void gelu_fwd_kernel(BiasGeluFwdArgs a) {
  const int64_t n = a.rows * a.cols;
  const T* x = static_cast<const T*>(a.x);
  const float* bias = static_cast<const float*>(a.bias);
  T* y = static_cast<T*>(a.y);
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float v = to_acc(x[i]) + (bias ? bias[i % a.cols] : 0.0f);
    y[i] = from_acc<T>(gelu_any(v, a.approx));
  }
}

template <typename T>
__global__ void gelu_bwd_kernel(BiasGeluBwdArgs a) {
  const int64_t n = a.rows * a.cols;
  const T* x = static_cast<const T*>(a.x);
  const T* dy = static_cast<const T*>(a.dy);
  const float* bias = static_cast<const float*>(a.bias);
  T* dx = static_cast<T*>(a.dx);
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float v = to_acc(x[i]) + (bias ? bias[i % a.cols] : 0.0f);
    dx[i] = from_acc<T>(to_acc(dy[i]) * gelu_grad_any(v, a.approx));
  }
}

template <typename T>
__global__ void column_sum_kernel(const T* m, int64_t rows, int64_t cols, float* out) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= cols) return;
  float s = 0.0f;
  for (int64_t r = 0; r < rows; ++r) s += to_acc(m[r * cols + c]);
  out[c] = s;
}

int grid_for(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<int>(blocks < 65536 ? blocks : 65536);
}

}  // namespace
}  // namespace bertperf

using namespace bertperf;

extern "C" int bertperf_bias_gelu_fwd_cuda(const BiasGeluFwdArgs* args, void* stream) {
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int grid = grid_for(args->rows * args->cols);
  if (args->dtype == kBFloat16)
    gelu_fwd_kernel<bf16><<<grid, kThreads, 0, s>>>(*args);
  else if (args->dtype == kFloat32)
    gelu_fwd_kernel<float><<<grid, kThreads, 0, s>>>(*args);
  else
    return static_cast<int>(cudaErrorInvalidValue);
  return cuda::launch_status();
}

extern "C" int bertperf_bias_gelu_bwd_cuda(const BiasGeluBwdArgs* args, void* stream) {
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int grid = grid_for(args->rows * args->cols);
  const int col_grid = cuda::blocks_for(args->cols, kThreads);
  float* dbias = static_cast<float*>(args->dbias);
  if (args->dtype == kBFloat16) {
    gelu_bwd_kernel<bf16><<<grid, kThreads, 0, s>>>(*args);
    if (dbias)
      column_sum_kernel<bf16><<<col_grid, kThreads, 0, s>>>(static_cast<const bf16*>(args->dx),
                                                             args->rows, args->cols, dbias);
  } else if (args->dtype == kFloat32) {
    gelu_bwd_kernel<float><<<grid, kThreads, 0, s>>>(*args);
    if (dbias)
      column_sum_kernel<float><<<col_grid, kThreads, 0, s>>>(static_cast<const float*>(args->dx),
                                                              args->rows, args->cols, dbias);
  } else {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  return cuda::launch_status();
}
