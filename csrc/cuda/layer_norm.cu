// layer_norm CUDA kernels over the math in bertperf/layer_norm.h. Torch-free; plain C launch API.
//
// Forward: one warp per row; the row (x + bias + residual) is re-read from global memory for
// each pass (L1/L2 hits), so any width works. Backward: each of `kBwdWarps` warps walks a
// grid-stride set of rows, writes dx, and accumulates its own partial dgamma/dbeta/dbias row in
// the workspace; a second kernel sums the partials per column.
#include "bertperf/layer_norm.h"
#include "cuda_common.cuh"

namespace bertperf {
namespace {

using cuda::kWarp;
constexpr int kWarpsPerBlock = 4;
constexpr int64_t kBwdWarps = 512;

template <typename T>
__device__ __forceinline__ float ln_input(const T* xr, const T* rr, const float* bias, int64_t c) {
  float s = to_acc(xr[c]);
  if (bias) s += bias[c];
  if (rr) s += to_acc(rr[c]);
  return s;
}

template <typename T>
__global__ void ln_fwd_kernel(LayerNormFwdArgs a) {
  const int lane = threadIdx.x % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  if (row >= a.rows) return;
  const int64_t cols = a.cols;
  const T* xr = static_cast<const T*>(a.x) + row * cols;
  const T* rr = a.residual ? static_cast<const T*>(a.residual) + row * cols : nullptr;
  const float* bias = static_cast<const float*>(a.bias);
  const float* gamma = static_cast<const float*>(a.gamma);
  const float* beta = static_cast<const float*>(a.beta);
  float sum = 0.0f;
  for (int64_t c = lane; c < cols; c += kWarp) sum += ln_input(xr, rr, bias, c);
  const float mean = cuda::warp_sum(sum) / static_cast<float>(cols);
  float sq = 0.0f;
  for (int64_t c = lane; c < cols; c += kWarp) {
    const float d = ln_input(xr, rr, bias, c) - mean;
    sq += d * d;
  }
  const float rstd = ln_rstd(cuda::warp_sum(sq) / static_cast<float>(cols), static_cast<float>(a.eps));
  T* yr = static_cast<T*>(a.y) + row * cols;
  for (int64_t c = lane; c < cols; c += kWarp)
    yr[c] = from_acc<T>(ln_output(ln_input(xr, rr, bias, c), mean, rstd, gamma[c], beta[c]));
  if (lane == 0) {
    static_cast<float*>(a.mean)[row] = mean;
    static_cast<float*>(a.rstd)[row] = rstd;
  }
}

template <typename T>
__global__ void ln_bwd_kernel(LayerNormBwdArgs a, int64_t warps) {
  const int lane = threadIdx.x % kWarp;
  const int64_t w = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  if (w >= warps) return;
  const int64_t cols = a.cols;
  const float* bias = static_cast<const float*>(a.bias);
  const float* gamma = static_cast<const float*>(a.gamma);
  float* part = a.workspace + w * 3 * cols;
  for (int64_t c = lane; c < 3 * cols; c += kWarp) part[c] = 0.0f;
  for (int64_t row = w; row < a.rows; row += warps) {
    const T* xr = static_cast<const T*>(a.x) + row * cols;
    const T* rr = a.residual ? static_cast<const T*>(a.residual) + row * cols : nullptr;
    const T* dyr = static_cast<const T*>(a.dy) + row * cols;
    const float mean = static_cast<const float*>(a.mean)[row];
    const float rstd = static_cast<const float*>(a.rstd)[row];
    float sum_g = 0.0f, sum_gx = 0.0f;
    for (int64_t c = lane; c < cols; c += kWarp) {
      const float xhat = ln_xhat(ln_input(xr, rr, bias, c), mean, rstd);
      const float dy = to_acc(dyr[c]);
      const float g = dy * gamma[c];
      sum_g += g;
      sum_gx += g * xhat;
      part[c] += dy * xhat;
      part[cols + c] += dy;
    }
    const float mean_g = cuda::warp_sum(sum_g) / static_cast<float>(cols);
    const float mean_gx = cuda::warp_sum(sum_gx) / static_cast<float>(cols);
    T* dxr = static_cast<T*>(a.dx) + row * cols;
    for (int64_t c = lane; c < cols; c += kWarp) {
      const float xhat = ln_xhat(ln_input(xr, rr, bias, c), mean, rstd);
      const float ds = ln_grad_input(to_acc(dyr[c]) * gamma[c], xhat, rstd, mean_g, mean_gx);
      dxr[c] = from_acc<T>(ds);
      part[2 * cols + c] += ds;
    }
  }
}

__global__ void ln_bwd_reduce_kernel(LayerNormBwdArgs a, int64_t warps) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t cols = a.cols;
  if (c >= cols) return;
  float g = 0.0f, b = 0.0f, db = 0.0f;
  for (int64_t w = 0; w < warps; ++w) {
    const float* part = a.workspace + w * 3 * cols;
    g += part[c];
    b += part[cols + c];
    db += part[2 * cols + c];
  }
  static_cast<float*>(a.dgamma)[c] = g;
  static_cast<float*>(a.dbeta)[c] = b;
  if (a.dbias) static_cast<float*>(a.dbias)[c] = db;
}

int64_t bwd_warps(int64_t rows) { return rows < kBwdWarps ? rows : kBwdWarps; }

}  // namespace
}  // namespace bertperf

using namespace bertperf;

extern "C" int bertperf_layer_norm_fwd_cuda(const LayerNormFwdArgs* args, void* stream) {
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int blocks = cuda::blocks_for(args->rows, kWarpsPerBlock);
  const int threads = kWarpsPerBlock * kWarp;
  if (args->dtype == kBFloat16)
    ln_fwd_kernel<bf16><<<blocks, threads, 0, s>>>(*args);
  else if (args->dtype == kFloat32)
    ln_fwd_kernel<float><<<blocks, threads, 0, s>>>(*args);
  else
    return static_cast<int>(cudaErrorInvalidValue);
  return cuda::launch_status();
}

extern "C" int64_t bertperf_layer_norm_bwd_workspace_floats(int64_t rows, int64_t cols) {
  return bwd_warps(rows) * 3 * cols;
}

extern "C" int bertperf_layer_norm_bwd_cuda(const LayerNormBwdArgs* args, void* stream) {
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int64_t warps = bwd_warps(args->rows);
  const int blocks = cuda::blocks_for(warps, kWarpsPerBlock);
  const int threads = kWarpsPerBlock * kWarp;
  if (args->dtype == kBFloat16)
    ln_bwd_kernel<bf16><<<blocks, threads, 0, s>>>(*args, warps);
  else if (args->dtype == kFloat32)
    ln_bwd_kernel<float><<<blocks, threads, 0, s>>>(*args, warps);
  else
    return static_cast<int>(cudaErrorInvalidValue);
  const int status = cuda::launch_status();
  if (status != 0) return status;
  ln_bwd_reduce_kernel<<<cuda::blocks_for(args->cols, 256), 256, 0, s>>>(*args, warps);
  return cuda::launch_status();
}
