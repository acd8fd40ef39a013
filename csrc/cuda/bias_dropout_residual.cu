// bias_dropout_residual CUDA kernels over bertperf/bias_dropout_residual.h. Torch-free.
// Forward and dx: grid-stride elementwise, mask regenerated from the seed. dbias: one thread per
// column summing dx down the rows (coalesced across the warp).
#include "bertperf/bias_dropout_residual.h"
#include "cuda_common.cuh"

namespace bertperf {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void bdr_fwd_kernel(BiasDropoutResidualFwdArgs a) {
  const int64_t n = a.rows * a.cols;
  const T* x = static_cast<const T*>(a.x);
  const T* res = static_cast<const T*>(a.residual);
  const float* bias = static_cast<const float*>(a.bias);
  T* y = static_cast<T*>(a.y);
  const DropoutParams d = a.drop;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float f = d.threshold
                        ? dropout_factor(d.seed_lo, d.seed_hi, static_cast<uint32_t>(i), d.threshold, d.inv_keep)
                        : 1.0f;
    y[i] = from_acc<T>(bdr_output(to_acc(x[i]), bias ? bias[i % a.cols] : 0.0f, to_acc(res[i]), f));
  }
}

template <typename T>
__global__ void bdr_bwd_kernel(BiasDropoutResidualBwdArgs a) {
  const int64_t n = a.rows * a.cols;
  const T* dy = static_cast<const T*>(a.dy);
  T* dx = static_cast<T*>(a.dx);
  const DropoutParams d = a.drop;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float f = d.threshold
                        ? dropout_factor(d.seed_lo, d.seed_hi, static_cast<uint32_t>(i), d.threshold, d.inv_keep)
                        : 1.0f;
    dx[i] = from_acc<T>(to_acc(dy[i]) * f);
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

template <typename T>
int bwd_launch(const BiasDropoutResidualBwdArgs* args, cudaStream_t s) {
  bdr_bwd_kernel<T><<<grid_for(args->rows * args->cols), kThreads, 0, s>>>(*args);
  if (args->dbias)
    column_sum_kernel<T><<<cuda::blocks_for(args->cols, kThreads), kThreads, 0, s>>>(
        static_cast<const T*>(args->dx), args->rows, args->cols, static_cast<float*>(args->dbias));
  return cuda::launch_status();
}

}  // namespace
}  // namespace bertperf

using namespace bertperf;

extern "C" int bertperf_bias_dropout_residual_fwd_cuda(const BiasDropoutResidualFwdArgs* args,
                                                       void* stream) {
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int grid = grid_for(args->rows * args->cols);
  if (args->dtype == kBFloat16)
    bdr_fwd_kernel<bf16><<<grid, kThreads, 0, s>>>(*args);
  else if (args->dtype == kFloat32)
    bdr_fwd_kernel<float><<<grid, kThreads, 0, s>>>(*args);
  else
    return static_cast<int>(cudaErrorInvalidValue);
  return cuda::launch_status();
}

extern "C" int bertperf_bias_dropout_residual_bwd_cuda(const BiasDropoutResidualBwdArgs* args,
                                                       void* stream) {
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (args->dtype == kBFloat16) return bwd_launch<bf16>(args, s);
  if (args->dtype == kFloat32) return bwd_launch<float>(args, s);
  return static_cast<int>(cudaErrorInvalidValue);
}
