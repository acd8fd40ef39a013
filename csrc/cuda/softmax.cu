// Attention softmax CUDA kernels over bertperf/softmax.h. Torch-free; plain C launch API.
// One warp per row; the row is re-read for each pass (max, sum, write): L1 hits for attention
// rows (Sk <= a few thousand), and any Sk works.
#include "bertperf/softmax.h"
#include "cuda_common.cuh"

namespace bertperf {
namespace {

using cuda::kWarp;
constexpr int kWarpsPerBlock = 4;

template <typename T>
__global__ void softmax_fwd_kernel(SoftmaxFwdArgs a) {
  const int lane = threadIdx.x % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  if (row >= a.rows) return;
  const int64_t cols = a.cols;
  const float scale = static_cast<float>(a.scale);
  const T* xr = static_cast<const T*>(a.x) + row * cols;
  const float* mr = a.mask ? static_cast<const float*>(a.mask) +
                                 softmax_mask_offset(row, a.heads, a.q_len, a.mask_sb, a.mask_sh, a.mask_sq)
                           : nullptr;
  float mx = -INFINITY;
  for (int64_t c = lane; c < cols; c += kWarp)
    mx = fmaxf(mx, softmax_logit(to_acc(xr[c]), scale, mr ? mr[c] : 0.0f));
  mx = cuda::warp_max(mx);
  float sum = 0.0f;
  for (int64_t c = lane; c < cols; c += kWarp)
    sum += fast_exp(softmax_logit(to_acc(xr[c]), scale, mr ? mr[c] : 0.0f) - mx);
  const float inv = 1.0f / cuda::warp_sum(sum);
  T* yr = static_cast<T*>(a.y) + row * cols;
  T* pr = a.probs ? static_cast<T*>(a.probs) + row * cols : nullptr;
  const DropoutParams d = a.drop;
  for (int64_t c = lane; c < cols; c += kWarp) {
    const float p = fast_exp(softmax_logit(to_acc(xr[c]), scale, mr ? mr[c] : 0.0f) - mx) * inv;
    if (pr) {
      pr[c] = from_acc<T>(p);
      yr[c] = from_acc<T>(p * dropout_factor(d.seed_lo, d.seed_hi, static_cast<uint32_t>(row * cols + c),
                                             d.threshold, d.inv_keep));
    } else {
      yr[c] = from_acc<T>(p);
    }
  }
}

template <typename T>
__global__ void softmax_bwd_kernel(SoftmaxBwdArgs a) {
  const int lane = threadIdx.x % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  if (row >= a.rows) return;
  const int64_t cols = a.cols;
  const T* dyr = static_cast<const T*>(a.dy) + row * cols;
  const T* pr = static_cast<const T*>(a.probs) + row * cols;
  const DropoutParams d = a.drop;
  float dot = 0.0f;
  for (int64_t c = lane; c < cols; c += kWarp) {
    const float f = d.threshold ? dropout_factor(d.seed_lo, d.seed_hi, static_cast<uint32_t>(row * cols + c),
                                                 d.threshold, d.inv_keep)
                                : 1.0f;
    dot += to_acc(dyr[c]) * f * to_acc(pr[c]);
  }
  dot = cuda::warp_sum(dot);
  T* dxr = static_cast<T*>(a.dx) + row * cols;
  const float scale = static_cast<float>(a.scale);
  for (int64_t c = lane; c < cols; c += kWarp) {
    const float f = d.threshold ? dropout_factor(d.seed_lo, d.seed_hi, static_cast<uint32_t>(row * cols + c),
                                                 d.threshold, d.inv_keep)
                                : 1.0f;
    dxr[c] = from_acc<T>(softmax_grad(to_acc(pr[c]), to_acc(dyr[c]) * f, dot, scale));
  }
}

}  // namespace
}  // namespace bertperf

using namespace bertperf;

extern "C" int bertperf_softmax_fwd_cuda(const SoftmaxFwdArgs* args, void* stream) {
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int blocks = cuda::blocks_for(args->rows, kWarpsPerBlock);
  if (args->dtype == kBFloat16)
    softmax_fwd_kernel<bf16><<<blocks, kWarpsPerBlock * kWarp, 0, s>>>(*args);
  else if (args->dtype == kFloat32)
    softmax_fwd_kernel<float><<<blocks, kWarpsPerBlock * kWarp, 0, s>>>(*args);
  else
    return static_cast<int>(cudaErrorInvalidValue);
  return cuda::launch_status();
}

extern "C" int bertperf_softmax_bwd_cuda(const SoftmaxBwdArgs* args, void* stream) {
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int blocks = cuda::blocks_for(args->rows, kWarpsPerBlock);
  if (args->dtype == kBFloat16)
    softmax_bwd_kernel<bf16><<<blocks, kWarpsPerBlock * kWarp, 0, s>>>(*args);
  else if (args->dtype == kFloat32)
    softmax_bwd_kernel<float><<<blocks, kWarpsPerBlock * kWarp, 0, s>>>(*args);
  else
    return static_cast<int>(cudaErrorInvalidValue);
  return cuda::launch_status();
}
