// bertperf shared kernel math: compiled by g++ (CPU build) and by nvcc (CUDA build).
//
// Everything here is torch-free, header-only and `BP_HD` (= __host__ __device__ inline under
// nvcc, always-inline under g++), so the CPU tests exercise the very functions the CUDA kernels
// call. Rules for this folder:
//   * per-element math only (no loops over rows, no threads): loops live in cpu/ and cuda/;
//   * branch-free where possible (ternaries, not ifs) so g++ can vectorize the CPU loops;
//   * arithmetic in the accumulation type acc_t<T>: fp32 for fp32 and bf16 data (bf16 is a
//     storage type only: bf16 in, fp32 math, bf16 out), fp64 for fp64 data (the CPU build
//     instantiates fp64 so torch.autograd.gradcheck can check the kernels' gradients).
#pragma once

#include <stdint.h>
#include <string.h>

#include <math.h>

#if defined(__CUDACC__)
#define BP_HD __host__ __device__ __forceinline__
#else
#define BP_HD inline __attribute__((always_inline))
#endif

namespace bertperf {

// Element types the kernels read and write. The numeric values are part of the C API.
enum DType : int32_t { kFloat32 = 0, kBFloat16 = 1, kFloat64 = 2 };

// bfloat16 storage: the upper 16 bits of an IEEE float. Layout-compatible with torch's
// c10::BFloat16 and CUDA's __nv_bfloat16, so raw data pointers can be reinterpreted.
struct bf16 {
  uint16_t bits;
};

BP_HD float bits_to_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
#endif
}

BP_HD uint32_t float_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
#endif
}

// Accumulation (math) type of each storage type; parameters and saved statistics use it too.
template <typename T>
struct AccType {
  using type = float;
};
template <>
struct AccType<double> {
  using type = double;
};
template <typename T>
using acc_t = typename AccType<T>::type;

BP_HD float to_acc(float x) { return x; }
BP_HD double to_acc(double x) { return x; }
BP_HD float to_acc(bf16 x) { return bits_to_float(static_cast<uint32_t>(x.bits) << 16); }

// acc_t<T> -> T; for bf16 round-to-nearest-even (NaN stays a quiet NaN), branch-free.
template <typename T>
BP_HD T from_acc(acc_t<T> v);

template <>
BP_HD float from_acc<float>(float f) {
  return f;
}

template <>
BP_HD double from_acc<double>(double f) {
  return f;
}

template <>
BP_HD bf16 from_acc<bf16>(float f) {
  const uint32_t u = float_to_bits(f);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const uint32_t quiet_nan = (u >> 16) | 0x40u;
  bf16 out;
  out.bits = static_cast<uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded);
  return out;
}

// exp(x) for x in float range; exact to ~2 ulp. Results below ~1e-38 flush to 0 and inputs are
// clamped to [-88, 88] (so +inf input gives e^88, not inf; softmax never sees that case after
// max-subtraction). On the GPU the hardware-backed expf is used; on the CPU a polynomial that
// g++ vectorizes (Cody-Waite reduction by ln 2, degree-6 polynomial, exponent by bit shift).
BP_HD float fast_exp(float x) {
#if defined(__CUDA_ARCH__)
  return expf(x);
#else
  x = x > -88.0f ? x : -88.0f;
  x = x < 88.0f ? x : 88.0f;
  // n = round(x / ln2) by the 1.5 * 2^23 trick (valid for |n| < 2^22).
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  return p * bits_to_float(static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23);
#endif
}

// erf(x), absolute error < 5e-7: x P(x^2) / Q(x^2) on x clamped to [-3.925, 3.925] (beyond it
// erf rounds to +-1 in fp32), a rational least-squares fit made for this project (degrees 6 and
// 3 in x^2). No exp: ~30% cheaper than the exp-based Abramowitz-Stegun form on AVX-512, which
// makes the fused GELU faster than torch's own vectorized one. The GPU uses erff.
BP_HD float fast_erf(float x) {
#if defined(__CUDA_ARCH__)
  return erff(x);
#else
  float c = x < 3.925f ? x : 3.925f;
  c = c > -3.925f ? c : -3.925f;
  const float z = c * c;
  float p = 2.038377379903733e-08f;
  p = p * z - 1.4777402325966116e-06f;
  p = p * z + 4.2737746767067604e-05f;
  p = p * z - 1.3952192728029845e-04f;
  p = p * z + 3.875403452646154e-02f;
  p = p * z + 1.1191975747601969e-01f;
  p = p * z + 1.1283824106349154f;
  float q = 6.700875581710956e-03f;
  q = q * z + 7.843798706012069e-02f;
  q = q * z + 4.3254970014571725e-01f;
  q = q * z + 1.0f;
  // The division stays: a bit-trick reciprocal with three Newton steps measured 12-20% slower
  // on AVX-512 (0.37-0.40 vs 0.33 ns per element for the fp32 GELU in cache).
  return c * p / q;
#endif
}

// tanh(x) = sign(x) (1 - 2 / (1 + e^{2|x|})): saturates correctly at both ends, absolute error
// ~1e-7.
BP_HD float fast_tanh(float x) {
#if defined(__CUDA_ARCH__)
  return tanhf(x);
#else
  const float ax = __builtin_fabsf(x);
  const float t = 1.0f - 2.0f / (1.0f + fast_exp(2.0f * ax));
  return __builtin_copysignf(t, x);
#endif
}

// fp64 versions (CPU gradcheck builds only need them to be exact, not fast).
BP_HD double fast_exp(double x) { return exp(x); }
BP_HD double fast_erf(double x) { return erf(x); }
BP_HD double fast_tanh(double x) { return tanh(x); }

// ---- counter-based dropout RNG ---------------------------------------------------------------
// keep(seed, i) depends only on (seed, element index), so the backward regenerates the forward's
// mask instead of storing it, and the CPU, CUDA, Triton and torch-reference implementations draw
// the *same* mask for the same seed (tests compare them exactly). Two rounds of the murmur3
// finalizer over the 32-bit index mixed with the two halves of the 64-bit seed.
BP_HD uint32_t mix32(uint32_t h) {
  h ^= h >> 16;
  h *= 0x85ebca6bu;
  h ^= h >> 13;
  h *= 0xc2b2ae35u;
  h ^= h >> 16;
  return h;
}

BP_HD uint32_t dropout_hash(uint32_t seed_lo, uint32_t seed_hi, uint32_t index) {
  return mix32(mix32(index ^ seed_lo) + seed_hi);
}

// Keep threshold for drop probability p: element kept iff hash >= threshold, where
// threshold = floor(p * 2^32) saturated to 2^32 - 1. Every implementation computes it from the
// double p exactly like this (bertperf/ops/_dropout.py does too), so masks agree bit for bit.
inline uint32_t dropout_threshold(double p) {
  const double t = p * 4294967296.0;
  return t >= 4294967295.0 ? 0xffffffffu : static_cast<uint32_t>(t);
}

// Dropout settings as every kernel receives them. threshold == 0 means no dropout (p < 2^-32
// counts as 0), and then inv_keep is 1.
struct DropoutParams {
  uint32_t seed_lo, seed_hi;  // the 64-bit seed, split
  uint32_t threshold;         // dropout_threshold(p)
  float inv_keep;             // 1 / (1 - p), or 1 when threshold == 0
};

inline DropoutParams make_dropout_params(double p, uint64_t seed) {
  DropoutParams d;
  d.seed_lo = static_cast<uint32_t>(seed & 0xffffffffu);
  d.seed_hi = static_cast<uint32_t>(seed >> 32);
  d.threshold = p > 0.0 ? dropout_threshold(p) : 0u;
  d.inv_keep = d.threshold ? static_cast<float>(1.0 / (1.0 - p)) : 1.0f;
  return d;
}

// The dropout multiplier of element `index`: 1 / (1 - p) if kept, else 0.
template <typename A>
BP_HD A dropout_factor(uint32_t seed_lo, uint32_t seed_hi, uint32_t index, uint32_t threshold,
                       A inv_keep) {
  return dropout_hash(seed_lo, seed_hi, index) >= threshold ? inv_keep : A(0);
}

}  // namespace bertperf
