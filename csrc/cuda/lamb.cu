// lamb CUDA kernels over the math in bertperf/lamb.h. Torch-free; plain C launch API.
//
// One block per kLambChunk-element chunk of the tensor list (the block finds its tensor by a
// binary search in chunk_start), so a whole step is a handful of launches however many tensors
// there are. Each chunk writes fp64 partial sums to the workspace; a second kernel (one block per
// tensor) adds a tensor's partials in a fixed order, so results are deterministic. The fused step
// is: moments kernel -> per-tensor reduce, which also turns the norms into step sizes in the
// workspace -> apply kernel. Nothing returns to the host in between.
#include "bertperf/lamb.h"
#include "cuda_common.cuh"

namespace bertperf {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / cuda::kWarp;

// Block-wide sum of a float per thread; the result is valid in thread 0.
__device__ __forceinline__ float block_sum(float v, float* shared) {
  v = cuda::warp_sum(v);
  const int warp = threadIdx.x / cuda::kWarp, lane = threadIdx.x % cuda::kWarp;
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = threadIdx.x < kWarps ? shared[threadIdx.x] : 0.0f;
  if (warp == 0) v = cuda::warp_sum(v);
  __syncthreads();  // shared is reused by the caller's next block_sum
  return v;
}

__device__ __forceinline__ double warp_sum_f64(double v) {
#pragma unroll
  for (int offset = cuda::kWarp / 2; offset > 0; offset >>= 1)
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

struct Chunk {
  int64_t tensor, begin, len;
};

__device__ __forceinline__ Chunk this_chunk(const int64_t* numel, const int64_t* chunk_start,
                                            int64_t n) {
  const int64_t c = blockIdx.x;
  const int64_t i = lamb_owner(chunk_start, n, c);
  const int64_t begin = (c - chunk_start[i]) * kLambChunk;
  const int64_t rest = numel[i] - begin;
  return {i, begin, rest < kLambChunk ? rest : kLambChunk};
}

template <typename T>
__global__ void __launch_bounds__(kThreads) sq_kernel(LambSqNormArgs a) {
  __shared__ float shared[kWarps];
  const Chunk ch = this_chunk(a.numel, a.chunk_start, a.n);
  const T* x = static_cast<const T*>(a.x[ch.tensor]) + ch.begin;
  float s = 0.0f;
  for (int64_t j = threadIdx.x; j < ch.len; j += kThreads) {
    const float xj = to_acc(x[j]);
    s += xj * xj;
  }
  s = block_sum(s, shared);
  if (threadIdx.x == 0) a.workspace[blockIdx.x] = s;
}

template <typename G>
__global__ void __launch_bounds__(kThreads) moments_kernel(LambArgs a) {
  __shared__ float shared[kWarps];
  const Chunk ch = this_chunk(a.t.numel, a.t.chunk_start, a.t.n);
  const float* p = static_cast<const float*>(a.t.master[ch.tensor]) + ch.begin;
  const G* g = static_cast<const G*>(a.t.grad[ch.tensor]) + ch.begin;
  float* m = static_cast<float*>(a.t.exp_avg[ch.tensor]) + ch.begin;
  float* v = static_cast<float*>(a.t.exp_avg_sq[ch.tensor]) + ch.begin;
  float sp = 0.0f, su = 0.0f;
  for (int64_t j = threadIdx.x; j < ch.len; j += kThreads) {
    float mj = m[j], vj = v[j];
    lamb_moments(a.s, to_acc(g[j]), mj, vj);
    m[j] = mj;
    v[j] = vj;
    const float pj = p[j];
    const float u = lamb_update(a.s, pj, mj, vj);
    sp += pj * pj;
    su += u * u;
  }
  sp = block_sum(sp, shared);
  su = block_sum(su, shared);
  if (threadIdx.x == 0) {
    a.workspace[2 * blockIdx.x] = sp;
    a.workspace[2 * blockIdx.x + 1] = su;
  }
}

// One block per tensor: out[i * width + k] = sum over the tensor's chunks c of part[c * width + k]
// (fixed order). If steps is set (width 2), also steps[i] = lr * trust ratio.
__global__ void __launch_bounds__(kThreads) reduce_kernel(const double* part, int width,
                                                         const int64_t* chunk_start, double* out,
                                                         double* steps, double lr, int32_t adapt) {
  __shared__ double shared[2][kWarps];
  const int64_t i = blockIdx.x;
  const int warp = threadIdx.x / cuda::kWarp, lane = threadIdx.x % cuda::kWarp;
  double acc[2] = {0.0, 0.0};
  for (int64_t c = chunk_start[i] + threadIdx.x; c < chunk_start[i + 1]; c += kThreads)
    for (int k = 0; k < width; ++k) acc[k] += part[c * width + k];
  for (int k = 0; k < width; ++k) {
    const double w = warp_sum_f64(acc[k]);
    if (lane == 0) shared[k][warp] = w;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    double total[2] = {0.0, 0.0};
    for (int k = 0; k < width; ++k) {
      for (int w = 0; w < kWarps; ++w) total[k] += shared[k][w];
      if (out) out[i * width + k] = total[k];
    }
    if (steps) steps[i] = lamb_step_size(lr, adapt, total[0], total[1]);
  }
}

__global__ void __launch_bounds__(kThreads) apply_kernel(LambArgs a, const double* steps) {
  const Chunk ch = this_chunk(a.t.numel, a.t.chunk_start, a.t.n);
  float* p = static_cast<float*>(a.t.master[ch.tensor]) + ch.begin;
  const float* m = static_cast<const float*>(a.t.exp_avg[ch.tensor]) + ch.begin;
  const float* v = static_cast<const float*>(a.t.exp_avg_sq[ch.tensor]) + ch.begin;
  bf16* out = a.t.param[ch.tensor] ? static_cast<bf16*>(a.t.param[ch.tensor]) + ch.begin : nullptr;
  const float step = static_cast<float>(steps[ch.tensor]);
  for (int64_t j = threadIdx.x; j < ch.len; j += kThreads) {
    const float pj = p[j] - step * lamb_update(a.s, p[j], m[j], v[j]);
    p[j] = pj;
    if (out) out[j] = from_acc<bf16>(pj);
  }
}

int launch_moments(const LambArgs& a, int64_t chunks, cudaStream_t s) {
  if (a.t.grad_dtype == kBFloat16)
    moments_kernel<bf16><<<static_cast<unsigned>(chunks), kThreads, 0, s>>>(a);
  else if (a.t.grad_dtype == kFloat32)
    moments_kernel<float><<<static_cast<unsigned>(chunks), kThreads, 0, s>>>(a);
  else
    return static_cast<int>(cudaErrorInvalidValue);
  return cuda::launch_status();
}

}  // namespace
}  // namespace bertperf

using namespace bertperf;

extern "C" int64_t bertperf_lamb_workspace_doubles(int64_t n, int64_t chunks) {
  return 2 * chunks + n;  // per-chunk partials (2 per chunk), then per-tensor step sizes
}

extern "C" int bertperf_lamb_sq_norms_cuda(const LambSqNormArgs* args, void* stream) {
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (args->n == 0) return 0;
  if (args->chunks > 0) {
    if (args->dtype == kBFloat16)
      sq_kernel<bf16><<<static_cast<unsigned>(args->chunks), kThreads, 0, s>>>(*args);
    else if (args->dtype == kFloat32)
      sq_kernel<float><<<static_cast<unsigned>(args->chunks), kThreads, 0, s>>>(*args);
    else
      return static_cast<int>(cudaErrorInvalidValue);
    const int status = cuda::launch_status();
    if (status != 0) return status;
  }
  reduce_kernel<<<static_cast<unsigned>(args->n), kThreads, 0, s>>>(
      args->workspace, 1, args->chunk_start, args->out, nullptr, 0.0, 0);
  return cuda::launch_status();
}

extern "C" int bertperf_lamb_update_moments_cuda(const LambArgs* args, void* stream) {
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (args->t.n == 0) return 0;
  if (args->t.chunks > 0) {
    const int status = launch_moments(*args, args->t.chunks, s);
    if (status != 0) return status;
  }
  reduce_kernel<<<static_cast<unsigned>(args->t.n), kThreads, 0, s>>>(
      args->workspace, 2, args->t.chunk_start, args->sq_norms, nullptr, 0.0, 0);
  return cuda::launch_status();
}

extern "C" int bertperf_lamb_apply_update_cuda(const LambArgs* args, void* stream) {
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (args->t.chunks == 0) return 0;
  apply_kernel<<<static_cast<unsigned>(args->t.chunks), kThreads, 0, s>>>(*args, args->step_sizes);
  return cuda::launch_status();
}

extern "C" int bertperf_lamb_step_cuda(const LambArgs* args, void* stream) {
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (args->t.chunks == 0) return 0;
  int status = launch_moments(*args, args->t.chunks, s);
  if (status != 0) return status;
  double* steps = args->workspace + 2 * args->t.chunks;
  reduce_kernel<<<static_cast<unsigned>(args->t.n), kThreads, 0, s>>>(
      args->workspace, 2, args->t.chunk_start, nullptr, steps, args->s.lr, args->s.adapt);
  status = cuda::launch_status();
  if (status != 0) return status;
  apply_kernel<<<static_cast<unsigned>(args->t.chunks), kThreads, 0, s>>>(*args, steps);
  return cuda::launch_status();
}
