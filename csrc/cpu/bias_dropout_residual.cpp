// bias_dropout_residual on the CPU: OpenMP over rows, one vectorized pass per row; the dropout
// mask is the counter-based hash of bertperf/common.h (vectorizes: 32-bit multiplies and shifts).
// kNative (bf16 on CPUs with AVX512_BF16, cpu::native_bf16): rows are finished in fp32 chunks of
// kChunk in an L1 scratch buffer and stored with vcvtneps2bf16 (cpu::store_bf16_native).
#include <type_traits>
#include <vector>

#include "bertperf/bias_dropout_residual.h"
#include "cpu_common.h"

namespace bertperf {
namespace {

constexpr int64_t kChunk = 512;

#if defined(__x86_64__)
template <bool kDropout>
BP_TARGET_AVX512BF16 BP_HD void bdr_fwd_rows_native(const BiasDropoutResidualFwdArgs* a, int64_t r0, int64_t r1) {
  const int64_t cols = a->cols;
  const float* bias = static_cast<const float*>(a->bias);
  const DropoutParams d = a->drop;
  const float inv_keep = d.inv_keep;
  float buf[kChunk];
  for (int64_t r = r0; r < r1; ++r) {
    const bf16* xr = static_cast<const bf16*>(a->x) + r * cols;
    const bf16* rr = static_cast<const bf16*>(a->residual) + r * cols;
    bf16* yr = static_cast<bf16*>(a->y) + r * cols;
    for (int64_t j0 = 0; j0 < cols; j0 += kChunk) {
      const int64_t n = std::min(kChunk, cols - j0);
      const uint32_t base = static_cast<uint32_t>(r * cols + j0);
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) {
        const float f = kDropout ? dropout_factor(d.seed_lo, d.seed_hi, base + static_cast<uint32_t>(j),
                                                  d.threshold, inv_keep)
                                 : 1.0f;
        buf[j] = bdr_output(to_acc(xr[j0 + j]), bias ? bias[j0 + j] : 0.0f, to_acc(rr[j0 + j]), f);
      }
      cpu::store_bf16_native(buf, yr + j0, n);
    }
  }
}

BP_TARGET_AVX512BF16 BP_HD void bdr_bwd_rows_native(const BiasDropoutResidualBwdArgs* a, int64_t r0, int64_t r1,
                                                    float* part) {
  const int64_t cols = a->cols;
  const DropoutParams d = a->drop;
  const float inv_keep = d.inv_keep;
  float buf[kChunk];
  for (int64_t r = r0; r < r1; ++r) {
    const bf16* dyr = static_cast<const bf16*>(a->dy) + r * cols;
    bf16* dxr = static_cast<bf16*>(a->dx) + r * cols;
    for (int64_t j0 = 0; j0 < cols; j0 += kChunk) {
      const int64_t n = std::min(kChunk, cols - j0);
      const uint32_t base = static_cast<uint32_t>(r * cols + j0);
#pragma omp simd
      for (int64_t j = 0; j < n; ++j)
        buf[j] = to_acc(dyr[j0 + j]) * dropout_factor(d.seed_lo, d.seed_hi, base + static_cast<uint32_t>(j),
                                                      d.threshold, inv_keep);
      if (a->dbias) {
        float* pr = part + j0;
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) pr[j] += buf[j];
      }
      cpu::store_bf16_native(buf, dxr + j0, n);
    }
  }
}

BP_TARGET_AVX512BF16 void fwd_drop_bf16_native(const BiasDropoutResidualFwdArgs* a, int64_t r0, int64_t r1) {
  bdr_fwd_rows_native<true>(a, r0, r1);
}
BP_TARGET_AVX512BF16 void fwd_nodrop_bf16_native(const BiasDropoutResidualFwdArgs* a, int64_t r0, int64_t r1) {
  bdr_fwd_rows_native<false>(a, r0, r1);
}
BP_TARGET_AVX512BF16 void bwd_bf16_native(const BiasDropoutResidualBwdArgs* a, int64_t r0, int64_t r1, float* part) {
  bdr_bwd_rows_native(a, r0, r1, part);
}
#endif

template <typename T, bool kDropout>
BP_HD void bdr_fwd_rows(const BiasDropoutResidualFwdArgs* a, int64_t r0, int64_t r1) {
  using A = acc_t<T>;
  const int64_t cols = a->cols;
  const A* bias = static_cast<const A*>(a->bias);
  const DropoutParams d = a->drop;
  const A inv_keep = static_cast<A>(d.inv_keep);
  for (int64_t r = r0; r < r1; ++r) {
    const T* xr = static_cast<const T*>(a->x) + r * cols;
    const T* rr = static_cast<const T*>(a->residual) + r * cols;
    T* yr = static_cast<T*>(a->y) + r * cols;
    const uint32_t base = static_cast<uint32_t>(r * cols);
    if (bias) {
#pragma omp simd
      for (int64_t j = 0; j < cols; ++j) {
        const A f = kDropout ? dropout_factor(d.seed_lo, d.seed_hi, base + static_cast<uint32_t>(j),
                                              d.threshold, inv_keep)
                             : A(1);
        yr[j] = from_acc<T>(bdr_output(to_acc(xr[j]), bias[j], to_acc(rr[j]), f));
      }
    } else {
#pragma omp simd
      for (int64_t j = 0; j < cols; ++j) {
        const A f = kDropout ? dropout_factor(d.seed_lo, d.seed_hi, base + static_cast<uint32_t>(j),
                                              d.threshold, inv_keep)
                             : A(1);
        yr[j] = from_acc<T>(bdr_output(to_acc(xr[j]), A(0), to_acc(rr[j]), f));
      }
    }
  }
}

// part: this thread's [cols] partial dbias (only touched when a->dbias).
template <typename T>
BP_HD void bdr_bwd_rows(const BiasDropoutResidualBwdArgs* a, int64_t r0, int64_t r1, acc_t<T>* part) {
  using A = acc_t<T>;
  const int64_t cols = a->cols;
  const DropoutParams d = a->drop;
  const A inv_keep = static_cast<A>(d.inv_keep);
  for (int64_t r = r0; r < r1; ++r) {
    const T* dyr = static_cast<const T*>(a->dy) + r * cols;
    T* dxr = static_cast<T*>(a->dx) + r * cols;
    const uint32_t base = static_cast<uint32_t>(r * cols);
    if (a->dbias) {
#pragma omp simd
      for (int64_t j = 0; j < cols; ++j) {
        const A g = to_acc(dyr[j]) * dropout_factor(d.seed_lo, d.seed_hi,
                                                    base + static_cast<uint32_t>(j), d.threshold, inv_keep);
        dxr[j] = from_acc<T>(g);
        part[j] += g;
      }
    } else {
#pragma omp simd
      for (int64_t j = 0; j < cols; ++j)
        dxr[j] = from_acc<T>(to_acc(dyr[j]) * dropout_factor(d.seed_lo, d.seed_hi,
                                                             base + static_cast<uint32_t>(j),
                                                             d.threshold, inv_keep));
    }
  }
}

#define BP_BDR_VARIANTS(T, NAME)                                     \
  BP_CPU_MULTIVERSION(fwd_drop_##NAME, (bdr_fwd_rows<T, true>))      \
  BP_CPU_MULTIVERSION(fwd_nodrop_##NAME, (bdr_fwd_rows<T, false>))   \
  BP_CPU_MULTIVERSION(bwd_##NAME, bdr_bwd_rows<T>)

BP_BDR_VARIANTS(float, f32)
BP_BDR_VARIANTS(bf16, bf16)
BP_BDR_VARIANTS(double, f64)

template <typename T>
void fwd(const BiasDropoutResidualFwdArgs* a) {
  const int threads = cpu::plan_threads(a->rows, a->cols, a->num_threads);
  const bool drop = a->drop.threshold != 0;
  cpu::parallel_rows(a->rows, threads, [a, drop](int, int64_t r0, int64_t r1) {
    if constexpr (std::is_same_v<T, float>) drop ? fwd_drop_f32(a, r0, r1) : fwd_nodrop_f32(a, r0, r1);
    if constexpr (std::is_same_v<T, bf16>) {
#if defined(__x86_64__)
      if (cpu::native_bf16()) return drop ? fwd_drop_bf16_native(a, r0, r1) : fwd_nodrop_bf16_native(a, r0, r1);
#endif
      drop ? fwd_drop_bf16(a, r0, r1) : fwd_nodrop_bf16(a, r0, r1);
    }
    if constexpr (std::is_same_v<T, double>) drop ? fwd_drop_f64(a, r0, r1) : fwd_nodrop_f64(a, r0, r1);
  });
}

template <typename T>
void bwd(const BiasDropoutResidualBwdArgs* a) {
  using A = acc_t<T>;
  const int64_t cols = a->cols;
  const int threads = cpu::plan_threads(a->rows, cols, a->num_threads);
  std::vector<A> partial(a->dbias ? static_cast<size_t>(threads) * cols : 1, A(0));
  A* parts = partial.data();
  cpu::parallel_rows(a->rows, threads, [a, parts, cols](int t, int64_t r0, int64_t r1) {
    A* part = a->dbias ? parts + static_cast<int64_t>(t) * cols : parts;
    if constexpr (std::is_same_v<T, float>) bwd_f32(a, r0, r1, part);
    if constexpr (std::is_same_v<T, bf16>) {
#if defined(__x86_64__)
      if (cpu::native_bf16()) return bwd_bf16_native(a, r0, r1, part);
#endif
      bwd_bf16(a, r0, r1, part);
    }
    if constexpr (std::is_same_v<T, double>) bwd_f64(a, r0, r1, part);
  });
  if (a->dbias) cpu::sum_partials(parts, threads, cols, static_cast<A*>(a->dbias));
}

}  // namespace

void bias_dropout_residual_fwd_cpu(const BiasDropoutResidualFwdArgs& a) {
  switch (a.dtype) {
    case kBFloat16: return fwd<bf16>(&a);
    case kFloat64: return fwd<double>(&a);
    default: return fwd<float>(&a);
  }
}

void bias_dropout_residual_bwd_cpu(const BiasDropoutResidualBwdArgs& a) {
  switch (a.dtype) {
    case kBFloat16: return bwd<bf16>(&a);
    case kFloat64: return bwd<double>(&a);
    default: return bwd<float>(&a);
  }
}

}  // namespace bertperf
