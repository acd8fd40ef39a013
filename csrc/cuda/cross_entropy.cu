// Fused cross-entropy CUDA kernel over bertperf/cross_entropy.h. Torch-free; plain C launch API.
// One block per row. Pass 1 reads x (+ bias), writes y and keeps a per-thread online max and
// rescaled sum of exponentials, combined by a block reduction of (max, sum) pairs; pass 2 reads
// x (+ bias) again (an L2 hit: a 30522-word row is 61-122 KB) and writes grad. The bias gradient
// is summed by atomicAdd of every row's fp32 gradient into dbias, zeroed by cudaMemsetAsync first
// (the order of the additions, hence the last bits of dbias, is not deterministic).
#include "bertperf/cross_entropy.h"
#include "cuda_common.cuh"

namespace bertperf {
namespace {

using cuda::kWarp;

// A running (max, sum of exp(z - max)) pair; max == -inf means nothing seen yet (sum is 0).
struct MaxSum {
  float m, s;
};

__device__ __forceinline__ MaxSum combine(MaxSum a, MaxSum b) {
  const float m = fmaxf(a.m, b.m);
  if (m == -INFINITY) return {m, 0.0f};
  return {m, a.s * fast_exp_nonpositive(a.m - m) + b.s * fast_exp_nonpositive(b.m - m)};
}

// Adds one logit to a running pair: one exp per element (the rescale only when the max grows).
__device__ __forceinline__ MaxSum push(MaxSum a, float z) {
  if (z > a.m) return {z, a.s * fast_exp_nonpositive(a.m - z) + 1.0f};
  return {a.m, a.s + (a.m == -INFINITY ? 0.0f : fast_exp_nonpositive(z - a.m))};
}

__device__ __forceinline__ MaxSum warp_combine(MaxSum v) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset >>= 1) {
    const MaxSum o{__shfl_xor_sync(0xffffffffu, v.m, offset), __shfl_xor_sync(0xffffffffu, v.s, offset)};
    v = combine(v, o);
  }
  return v;
}

// The (max, sum) of the whole block, returned to every thread. blockDim.x: a multiple of 32.
__device__ MaxSum block_combine(MaxSum v) {
  __shared__ float sm[kWarp], ss[kWarp];
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int warps = blockDim.x / kWarp;
  v = warp_combine(v);
  if (lane == 0) {
    sm[warp] = v.m;
    ss[warp] = v.s;
  }
  __syncthreads();
  if (warp == 0) {
    MaxSum w = lane < warps ? MaxSum{sm[lane], ss[lane]} : MaxSum{-INFINITY, 0.0f};
    w = warp_combine(w);
    if (lane == 0) {
      sm[0] = w.m;
      ss[0] = w.s;
    }
  }
  __syncthreads();
  return {sm[0], ss[0]};
}

template <typename T, bool kBias>
__global__ void cross_entropy_fwd_kernel(CrossEntropyFwdArgs a) {
  const int64_t row = blockIdx.x;
  const int64_t cols = a.cols;
  const T* xr = static_cast<const T*>(a.x) + row * cols;
  const float* bias = static_cast<const float*>(a.bias);
  T* yr = kBias ? static_cast<T*>(a.y) + row * cols : nullptr;
  // pass 1: y and this thread's online (max, sum)
  MaxSum acc{-INFINITY, 0.0f};
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    float z = to_acc(xr[c]);
    if (kBias) {
      z += bias[c];
      yr[c] = from_acc<T>(z);
    }
    acc = push(acc, z);
  }
  const MaxSum tot = block_combine(acc);
  const float lse = tot.m + logf(tot.s);
  const int64_t label = a.labels[row];
  const float picked = to_acc(xr[label]) + (kBias ? bias[label] : 0.0f);
  if (threadIdx.x == 0) {
    static_cast<float*>(a.loss)[row] = lse - picked;
    a.correct[row] = picked == tot.m ? 1 : 0;
  }
  // pass 2: grad (and the bias gradient)
  const float scale = static_cast<float>(a.scale);
  T* gr = static_cast<T*>(a.grad) + row * cols;
  float* dbias = static_cast<float*>(a.dbias);
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    const float z = to_acc(xr[c]) + (kBias ? bias[c] : 0.0f);
    const float g = ce_grad(ce_prob(z, lse), c == label, scale);
    gr[c] = from_acc<T>(g);
    if (kBias) atomicAdd(dbias + c, g);
  }
}

// Threads per block: enough to cover short rows with one element each, 512 for a vocabulary.
int threads_for(int64_t cols) {
  int t = kWarp;
  while (t < 512 && t < cols) t *= 2;
  return t;
}

template <typename T>
int launch(const CrossEntropyFwdArgs& a, cudaStream_t s) {
  const int threads = threads_for(a.cols);
  const unsigned blocks = static_cast<unsigned>(a.rows);
  if (a.bias) {
    const cudaError_t e = cudaMemsetAsync(a.dbias, 0, static_cast<size_t>(a.cols) * sizeof(float), s);
    if (e != cudaSuccess) return static_cast<int>(e);
    cross_entropy_fwd_kernel<T, true><<<blocks, threads, 0, s>>>(a);
  } else {
    cross_entropy_fwd_kernel<T, false><<<blocks, threads, 0, s>>>(a);
  }
  return cuda::launch_status();
}

}  // namespace
}  // namespace bertperf

using namespace bertperf;

extern "C" int bertperf_cross_entropy_fwd_cuda(const CrossEntropyFwdArgs* args, void* stream) {
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (args->rows < 0 || args->rows > 0x7fffffff || args->cols <= 0 || (args->bias && !args->dbias))
    return static_cast<int>(cudaErrorInvalidValue);
  if (args->rows == 0) return 0;
  if (args->dtype == kBFloat16) return launch<bf16>(*args, s);
  if (args->dtype == kFloat32) return launch<float>(*args, s);
  return static_cast<int>(cudaErrorInvalidValue);
}
