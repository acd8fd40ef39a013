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

// exp(x), branch-free (ternaries g++ turns into blends, so the CPU loops vectorize).
//   * x in [-87.3365, 88.3763]: relative error < 1.5e-7 (8.1e-8 measured by
//     tests/ops/test_fast_math.py against float64 on ~1.45M points spread over the float range);
//   * x > 88.3763 (incl. +inf) -> +inf (fp32 exp overflows at 88.7228: the band just below
//     is returned as inf too); x < -87.3365 (incl. -inf) -> 0 (results that would be fp32
//     denormals flush to 0); NaN -> NaN.
// Cody-Waite reduction x = n ln2 + r with ln2 split in two (|r| <= ln2 / 2), the degree-6
// polynomial of Cephes' expf (S. L. Moshier, Cephes Math Library, expf.c), and 2^n built by
// the magic-add trick: x log2e + (1.5 * 2^23 + 127) rounds to an integer whose low mantissa bits
// are n + 127, shifted into the exponent field. The GPU uses the hardware-backed expf.
namespace detail {
BP_HD float exp_core(float x) {  // 1.5e-7 relative for x in [-87.3365, 88.3763]
  x = x < -87.33654f ? -87.33654f : x;  // NaN-preserving clamps: a NaN fails both tests
  x = x > 88.37626f ? 88.37626f : x;
  const float k = x * 1.44269504088896341f + 12583039.0f;
  const float n = k - 12583039.0f;
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  return p * bits_to_float(float_to_bits(k) << 23);
}
}  // namespace detail

BP_HD float fast_exp(float x) {
#if defined(__CUDA_ARCH__)
  return expf(x);
#else
  float e = detail::exp_core(x);
  e = x > 88.37626f ? __builtin_inff() : e;
  return x < -87.33654f ? 0.0f : e;
#endif
}

// exp(x) for x <= 0 (or NaN): fast_exp without the overflow test (one blend less), same error.
BP_HD float fast_exp_nonpositive(float x) {
#if defined(__CUDA_ARCH__)
  return expf(x);
#else
  const float e = detail::exp_core(x);
  return x < -87.33654f ? 0.0f : e;
#endif
}

// erf(x), absolute error < 7e-7 over the whole float range (6.6e-7 measured against float64 by
// tests/ops/test_fast_math.py): x P(x^2) / Q(x^2) on x clamped to [-3.925, 3.925], a rational
// least-squares fit made for this project (degrees 6 and 3 in x^2), and exactly +-1 for
// |x| >= 3.925 (where erf rounds to +-1 in fp32; +-inf included); NaN -> NaN. No exp: ~30%
// cheaper than the exp-based Abramowitz-Stegun form on AVX-512, which makes the fused GELU
// forward faster than torch's own vectorized one. The GPU uses erff.
BP_HD float fast_erf(float x) {
#if defined(__CUDA_ARCH__)
  return erff(x);
#else
  float c = x > 3.925f ? 3.925f : x;  // NaN-preserving clamps
  c = c < -3.925f ? -3.925f : c;
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
  const float r = c * p / q;
  return __builtin_fabsf(x) >= 3.925f ? __builtin_copysignf(1.0f, x) : r;
#endif
}

// Phi(-u) = erfc(u / sqrt 2) / 2 for u >= 0, given e = exp(-u^2 / 2) (the caller has it: the
// GELU backward needs the normal pdf anyway, so the cdf costs one division and a degree-5
// polynomial instead of a second transcendental). Abramowitz & Stegun, Handbook of
// Mathematical Functions (1964), eq. 7.1.26 (C. Hastings' approximation):
//   erfc(z) = t (a1 + t (a2 + t (a3 + t (a4 + t a5)))) e^{-z^2},  t = 1 / (1 + p z),
// absolute error <= 1.5e-7 in erfc, so <= 7.5e-8 in Phi. u = +inf gives 0, NaN gives NaN.
BP_HD float normal_lower_tail(float u, float e) {
  const float t = 1.0f / (1.0f + 0.3275911f * 0.70710678118654752440f * u);
  float p = 1.061405429f;
  p = p * t - 1.453152027f;
  p = p * t + 1.421413741f;
  p = p * t - 0.284496736f;
  p = p * t + 0.254829592f;
  return 0.5f * e * (t * p);
}

// tanh(x) = sign(x) (1 - e) / (1 + e) with e = exp(-2|x|) in (0, 1] (no overflow test needed):
// absolute error < 2e-7 over the whole float range (tests/ops/test_fast_math.py), +-inf ->
// +-1, NaN -> NaN.
BP_HD float fast_tanh(float x) {
#if defined(__CUDA_ARCH__)
  return tanhf(x);
#else
  const float e = fast_exp_nonpositive(-2.0f * __builtin_fabsf(x));
  return __builtin_copysignf((1.0f - e) / (1.0f + e), x);
#endif
}

// fp64 versions (CPU gradcheck builds only need them to be exact, not fast).
BP_HD double fast_exp(double x) { return exp(x); }
BP_HD double fast_exp_nonpositive(double x) { return exp(x); }
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
