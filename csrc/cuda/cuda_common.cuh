// Helpers shared by csrc/cuda/<op>.cu. Torch-free: only the CUDA runtime.
#pragma once

#include <cuda_runtime.h>

#include "bertperf/common.h"

namespace bertperf {
namespace cuda {

constexpr int kWarp = 32;

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset >>= 1)
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

inline int blocks_for(int64_t items, int per_block) {
  return static_cast<int>((items + per_block - 1) / per_block);
}

inline int launch_status() { return static_cast<int>(cudaGetLastError()); }

}  // namespace cuda
}  // namespace bertperf
