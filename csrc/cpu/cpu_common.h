// CPU-only helpers shared by csrc/cpu/<op>.cpp: ISA dispatch and OpenMP row partitioning.
// Torch-free.
//
// Vectorization: the whole extension is compiled for the baseline x86-64 ISA (it must import on
// any x86-64 machine), and each hot row loop is compiled three times by BP_CPU_MULTIVERSION:
// for x86-64-v4 (AVX-512, 512-bit vectors), x86-64-v3 (AVX2 + FMA) and the baseline (SSE2).
// The first call picks the best level the running CPU supports (__builtin_cpu_supports also
// checks that the OS saves the vector state). This keeps one build portable while using
// AVX-512 where it exists, which -march=native would not (a build cache shared between machines
// would SIGILL) and -march=x86-64-v3 would waste. The loops stay plain C++: g++ vectorizes them
// given -O3 -fno-trapping-math (without it, the branch-free ternaries in the math headers
// are not if-converted on AVX2 and below).
#pragma once

#include <stdint.h>
#include <string.h>

#include <algorithm>

#include "bertperf/common.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace bertperf {
namespace cpu {

// kIsaAvx512Bf16: AVX-512 plus AVX512_BF16 (vcvtneps2bf16, one instruction for 16 fp32 -> bf16
// round-to-nearest-even conversions instead of ~6 integer ops each). Ops whose bf16 stores use
// it (`store_bf16_native`) have a dedicated clone; for every other loop it is the AVX-512 level.
enum IsaLevel : int { kIsaBaseline = 1, kIsaAvx2 = 3, kIsaAvx512 = 4, kIsaAvx512Bf16 = 5 };

inline int detect_isa() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    return __builtin_cpu_supports("avx512bf16") ? kIsaAvx512Bf16 : kIsaAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return kIsaAvx2;
#endif
  return kIsaBaseline;
}

// The level in use: detected once; tests lower it to check every compiled variant.
inline int& isa_level_ref() {
  static int level = detect_isa();
  return level;
}

inline int isa_level() { return isa_level_ref(); }

// True when the bf16 stores may use vcvtneps2bf16 (the level in use is kIsaAvx512Bf16).
inline bool native_bf16() { return isa_level() >= kIsaAvx512Bf16; }

// Request a level (1, 3, 4 or 5); clamped to what the CPU supports. Returns the level now in use.
inline int set_isa_level(int requested) {
  const int best = detect_isa();
  int level = requested >= kIsaAvx512Bf16 ? kIsaAvx512Bf16
              : requested >= kIsaAvx512   ? kIsaAvx512
              : requested >= kIsaAvx2     ? kIsaAvx2
                                          : kIsaBaseline;
  isa_level_ref() = std::min(level, best);
  return isa_level_ref();
}

// Minimum elements per thread before a second thread pays for its wake-up.
constexpr int64_t kMinElemsPerThread = 32 * 1024;

// Threads to use for `rows` rows of `cols` elements with at most `max_threads`.
inline int plan_threads(int64_t rows, int64_t cols, int max_threads) {
  if (max_threads <= 1 || rows <= 1) return 1;
  const int64_t by_work = std::max<int64_t>(1, (rows * cols) / kMinElemsPerThread);
  return static_cast<int>(std::min<int64_t>({static_cast<int64_t>(max_threads), by_work, rows}));
}

// Runs fn(thread_index, row_begin, row_end) over contiguous row blocks on `threads` threads
// (from plan_threads). thread_index < threads; every row is covered exactly once even if the
// OpenMP runtime grants fewer threads.
template <typename Fn>
void parallel_rows(int64_t rows, int threads, Fn&& fn) {
#if defined(_OPENMP)
  if (threads > 1) {
#pragma omp parallel num_threads(threads)
    {
      const int64_t n = omp_get_num_threads();
      const int64_t t = omp_get_thread_num();
      const int64_t begin = rows * t / n;
      const int64_t end = rows * (t + 1) / n;
      if (begin < end) fn(static_cast<int>(t), begin, end);
    }
    return;
  }
#endif
  fn(0, int64_t{0}, rows);
}

// Row reductions over contiguous A arrays (the L1 scratch rows). `#pragma omp simd reduction`
// leaves a serial chain of 16 scalar adds through the stack per call, which costs as much as the
// whole vector loop on a 128-wide attention row, and SLP does not vectorize lane arrays reliably.
// These use GCC vector extensions: one 64-byte vector of partial results (lowered to AVX2 or SSE
// halves in those clones), folded as a tree at the end.
template <typename A>
struct Lanes {
  static constexpr int kWidth = 64 / static_cast<int>(sizeof(A));
  typedef A Vec __attribute__((vector_size(64)));

  static inline __attribute__((always_inline)) Vec load(const A* p) {
    Vec v;
    memcpy(&v, p, sizeof v);
    return v;
  }
  static inline __attribute__((always_inline)) Vec splat(A x) {
    Vec v;
    for (int k = 0; k < kWidth; ++k) v[k] = x;
    return v;
  }
  // Horizontal fold by halving: 64 -> 32 -> 16 bytes as vectors, then the last lanes.
  typedef A Half __attribute__((vector_size(32)));
  typedef A Quarter __attribute__((vector_size(16)));
  static inline __attribute__((always_inline)) Quarter quarter_sum(Vec v) {
    Half lo, hi;
    memcpy(&lo, &v, 32);
    memcpy(&hi, reinterpret_cast<const char*>(&v) + 32, 32);
    lo += hi;
    Quarter a, b;
    memcpy(&a, &lo, 16);
    memcpy(&b, reinterpret_cast<const char*>(&lo) + 16, 16);
    return a + b;
  }
  static inline __attribute__((always_inline)) Quarter quarter_max(Vec v) {
    Half lo, hi;
    memcpy(&lo, &v, 32);
    memcpy(&hi, reinterpret_cast<const char*>(&v) + 32, 32);
    lo = hi > lo ? hi : lo;
    Quarter a, b;
    memcpy(&a, &lo, 16);
    memcpy(&b, reinterpret_cast<const char*>(&lo) + 16, 16);
    return b > a ? b : a;
  }
  static inline __attribute__((always_inline)) A fold_sum(Vec v) {
    const Quarter q = quarter_sum(v);
    A s = q[0];
    for (int k = 1; k < 16 / static_cast<int>(sizeof(A)); ++k) s += q[k];
    return s;
  }
  static inline __attribute__((always_inline)) A fold_max(Vec v) {
    const Quarter q = quarter_max(v);
    A m = q[0];
    for (int k = 1; k < 16 / static_cast<int>(sizeof(A)); ++k) m = q[k] > m ? q[k] : m;
    return m;
  }
};

template <typename A>
inline __attribute__((always_inline)) A row_sum(const A* x, int64_t n) {
  using L = Lanes<A>;
  typename L::Vec acc = L::splat(A(0));
  int64_t j = 0;
  for (; j + L::kWidth <= n; j += L::kWidth) acc += L::load(x + j);
  A s = L::fold_sum(acc);
  for (; j < n; ++j) s += x[j];
  return s;
}

template <typename A>
inline __attribute__((always_inline)) A row_dot(const A* x, const A* y, int64_t n) {
  using L = Lanes<A>;
  typename L::Vec acc = L::splat(A(0));
  int64_t j = 0;
  for (; j + L::kWidth <= n; j += L::kWidth) acc += L::load(x + j) * L::load(y + j);
  A s = L::fold_sum(acc);
  for (; j < n; ++j) s += x[j] * y[j];
  return s;
}

// sum_j (x[j] - c)^2
template <typename A>
inline __attribute__((always_inline)) A row_sq_dev(const A* x, A c, int64_t n) {
  using L = Lanes<A>;
  typename L::Vec acc = L::splat(A(0));
  const typename L::Vec cv = L::splat(c);
  int64_t j = 0;
  for (; j + L::kWidth <= n; j += L::kWidth) {
    const typename L::Vec d = L::load(x + j) - cv;
    acc += d * d;
  }
  A s = L::fold_sum(acc);
  for (; j < n; ++j) s += (x[j] - c) * (x[j] - c);
  return s;
}

template <typename A>
inline __attribute__((always_inline)) A row_max(const A* x, int64_t n) {
  using L = Lanes<A>;
  typename L::Vec acc = L::splat(-__builtin_inf());
  int64_t j = 0;
  for (; j + L::kWidth <= n; j += L::kWidth) {
    const typename L::Vec v = L::load(x + j);
    acc = v > acc ? v : acc;
  }
  A m = L::fold_max(acc);
  for (; j < n; ++j) m = x[j] > m ? x[j] : m;
  return m;
}

// out[j] = sum over t < parts of partial[t * cols + j] (per-thread column sums -> result).
template <typename A>
void sum_partials(const A* partial, int parts, int64_t cols, A* out) {
  for (int64_t j = 0; j < cols; ++j) out[j] = A(0);
  for (int t = 0; t < parts; ++t) {
    const A* p = partial + static_cast<int64_t>(t) * cols;
    for (int64_t j = 0; j < cols; ++j) out[j] += p[j];
  }
}

}  // namespace cpu
}  // namespace bertperf

#define BP_TARGET_AVX512 __attribute__((target("arch=x86-64-v4,prefer-vector-width=512")))
#define BP_TARGET_AVX2 __attribute__((target("arch=x86-64-v3")))
#define BP_TARGET_AVX512BF16 \
  __attribute__((target("arch=x86-64-v4,avx512bf16,prefer-vector-width=512")))

#if defined(__x86_64__)
namespace bertperf {
namespace cpu {
// dst[0:n] = bf16(src[0:n]) rounded to nearest even (NaN -> quiet NaN) by vcvtneps2bf16; the
// same results as from_acc<bf16> except that fp32 denormals become (signed) zero. Only for
// when native_bf16(). Inlined into BP_TARGET_AVX512BF16 callers; an out-of-line call from
// others (one per row: negligible).
BP_TARGET_AVX512BF16 inline void store_bf16_native(const float* src, bf16* dst, int64_t n) {
  int64_t j = 0;
  for (; j + 16 <= n; j += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + j),
                        (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(src + j)));
  if (j < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - j)) - 1u);
    _mm256_mask_storeu_epi16(dst + j, m, (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, src + j)));
  }
}
}  // namespace cpu
}  // namespace bertperf
#endif

// Defines NAME(args...) that forwards to IMPL(args...) compiled for the ISA level in use.
// IMPL must be an always-inline function (or template instance) so its loops are generated
// inside each target-specific clone.
#if defined(__x86_64__)
#define BP_CPU_MULTIVERSION(NAME, IMPL)                                                    \
  template <typename... A>                                                                 \
  BP_TARGET_AVX512 void NAME##_avx512(A... a) {                                            \
    IMPL(a...);                                                                            \
  }                                                                                        \
  template <typename... A>                                                                 \
  BP_TARGET_AVX2 void NAME##_avx2(A... a) {                                                \
    IMPL(a...);                                                                            \
  }                                                                                        \
  template <typename... A>                                                                 \
  void NAME##_base(A... a) {                                                               \
    IMPL(a...);                                                                            \
  }                                                                                        \
  template <typename... A>                                                                 \
  void NAME(A... a) {                                                                      \
    switch (::bertperf::cpu::isa_level()) {                                                \
      case ::bertperf::cpu::kIsaAvx512Bf16:                                                \
      case ::bertperf::cpu::kIsaAvx512: NAME##_avx512(a...); break;                        \
      case ::bertperf::cpu::kIsaAvx2: NAME##_avx2(a...); break;                            \
      default: NAME##_base(a...); break;                                                   \
    }                                                                                      \
  }
#else
#define BP_CPU_MULTIVERSION(NAME, IMPL) \
  template <typename... A>              \
  void NAME(A... a) {                   \
    IMPL(a...);                         \
  }
#endif
