// softmax on the CPU: OpenMP over rows; each row (Sk = 128 for BERT) is staged in an L1 scratch
// row: logits + max, exp + sum, then one write of the probabilities (and the dropped-out copy).
// kNative (bf16 on CPUs with AVX512_BF16, cpu::native_bf16): the outputs are finished in the
// fp32 scratch row and stored with vcvtneps2bf16 (cpu::store_bf16_native) instead of the
// generic bit-trick rounding, which cost more than the softmax math in the bf16 loops.
#include <type_traits>
#include <vector>

#include "bertperf/softmax.h"
#include "cpu_common.h"

namespace bertperf {
namespace {

template <typename T, bool kDropout, bool kNative = false>
BP_HD void softmax_fwd_rows(const SoftmaxFwdArgs* a, int64_t r0, int64_t r1, acc_t<T>* buf) {
  using A = acc_t<T>;
  const int64_t cols = a->cols;
  const A scale = static_cast<A>(a->scale);
  const A* mask = static_cast<const A*>(a->mask);
  const DropoutParams d = a->drop;
  const A inv_keep = static_cast<A>(d.inv_keep);
  // Row r = (b * heads + h) * q_len + q: divide once, then step (q, h, b) along the rows.
  int64_t q = r0 % a->q_len, h = (r0 / a->q_len) % a->heads, b = r0 / a->q_len / a->heads;
  for (int64_t r = r0; r < r1; ++r) {
    const T* xr = static_cast<const T*>(a->x) + r * cols;
    if (mask) {
      const A* mr = mask + b * a->mask_sb + h * a->mask_sh + q * a->mask_sq;
#pragma omp simd
      for (int64_t j = 0; j < cols; ++j) buf[j] = softmax_logit(to_acc(xr[j]), scale, mr[j]);
    } else {
#pragma omp simd
      for (int64_t j = 0; j < cols; ++j) buf[j] = softmax_logit(to_acc(xr[j]), scale, A(0));
    }
    const A mx = cpu::row_max(buf, cols);
#pragma omp simd
    for (int64_t j = 0; j < cols; ++j) buf[j] = fast_exp_nonpositive(buf[j] - mx);  // args <= 0
    const A sum = cpu::row_sum(buf, cols);
    const A inv = A(1) / sum;
    T* yr = static_cast<T*>(a->y) + r * cols;
#if defined(__x86_64__)
    if constexpr (kNative) {
      static_assert(std::is_same_v<T, bf16>);
#pragma omp simd
      for (int64_t j = 0; j < cols; ++j) buf[j] *= inv;
      if constexpr (kDropout) {
        cpu::store_bf16_native(buf, static_cast<T*>(a->probs) + r * cols, cols);
        const uint32_t base = static_cast<uint32_t>(r * cols);
#pragma omp simd
        for (int64_t j = 0; j < cols; ++j)
          buf[j] *= dropout_factor(d.seed_lo, d.seed_hi, base + static_cast<uint32_t>(j), d.threshold, inv_keep);
      }
      cpu::store_bf16_native(buf, yr, cols);
    } else
#endif
    if (kDropout) {
      T* pr = static_cast<T*>(a->probs) + r * cols;
      const uint32_t base = static_cast<uint32_t>(r * cols);
#pragma omp simd
      for (int64_t j = 0; j < cols; ++j) {
        const A pj = buf[j] * inv;
        pr[j] = from_acc<T>(pj);
        yr[j] = from_acc<T>(pj * dropout_factor(d.seed_lo, d.seed_hi, base + static_cast<uint32_t>(j),
                                                d.threshold, inv_keep));
      }
    } else {
#pragma omp simd
      for (int64_t j = 0; j < cols; ++j) yr[j] = from_acc<T>(buf[j] * inv);
    }
    if (++q == a->q_len) {
      q = 0;
      if (++h == a->heads) {
        h = 0;
        ++b;
      }
    }
  }
}

template <typename T, bool kDropout, bool kNative = false>
BP_HD void softmax_bwd_rows(const SoftmaxBwdArgs* a, int64_t r0, int64_t r1, acc_t<T>* buf) {
  using A = acc_t<T>;
  const int64_t cols = a->cols;
  const A scale = static_cast<A>(a->scale);
  const DropoutParams d = a->drop;
  const A inv_keep = static_cast<A>(d.inv_keep);
  A* pbuf = buf + cols;  // probs in A
  for (int64_t r = r0; r < r1; ++r) {
    const T* dyr = static_cast<const T*>(a->dy) + r * cols;
    const T* pr = static_cast<const T*>(a->probs) + r * cols;
    const uint32_t base = static_cast<uint32_t>(r * cols);
#pragma omp simd
    for (int64_t j = 0; j < cols; ++j) {
      const A f = kDropout ? dropout_factor(d.seed_lo, d.seed_hi, base + static_cast<uint32_t>(j),
                                            d.threshold, inv_keep)
                           : A(1);
      buf[j] = to_acc(dyr[j]) * f;
      pbuf[j] = to_acc(pr[j]);
    }
    const A dot = cpu::row_dot(buf, pbuf, cols);
    T* dxr = static_cast<T*>(a->dx) + r * cols;
#if defined(__x86_64__)
    if constexpr (kNative) {
#pragma omp simd
      for (int64_t j = 0; j < cols; ++j) buf[j] = softmax_grad(pbuf[j], buf[j], dot, scale);
      cpu::store_bf16_native(buf, dxr, cols);
      continue;
    }
#endif
#pragma omp simd
    for (int64_t j = 0; j < cols; ++j) dxr[j] = from_acc<T>(softmax_grad(to_acc(pr[j]), buf[j], dot, scale));
  }
}

#define BP_SOFTMAX_VARIANTS(T, NAME)                                      \
  BP_CPU_MULTIVERSION(fwd_drop_##NAME, (softmax_fwd_rows<T, true>))       \
  BP_CPU_MULTIVERSION(fwd_nodrop_##NAME, (softmax_fwd_rows<T, false>))    \
  BP_CPU_MULTIVERSION(bwd_drop_##NAME, (softmax_bwd_rows<T, true>))       \
  BP_CPU_MULTIVERSION(bwd_nodrop_##NAME, (softmax_bwd_rows<T, false>))

BP_SOFTMAX_VARIANTS(float, f32)
BP_SOFTMAX_VARIANTS(bf16, bf16)
BP_SOFTMAX_VARIANTS(double, f64)

#if defined(__x86_64__)
#define BP_SOFTMAX_NATIVE(NAME, IMPL, ARGS)                                            \
  BP_TARGET_AVX512BF16 void NAME(const ARGS* a, int64_t r0, int64_t r1, float* buf) { \
    IMPL(a, r0, r1, buf);                                                              \
  }
BP_SOFTMAX_NATIVE(fwd_drop_bf16_native, (softmax_fwd_rows<bf16, true, true>), SoftmaxFwdArgs)
BP_SOFTMAX_NATIVE(fwd_nodrop_bf16_native, (softmax_fwd_rows<bf16, false, true>), SoftmaxFwdArgs)
BP_SOFTMAX_NATIVE(bwd_drop_bf16_native, (softmax_bwd_rows<bf16, true, true>), SoftmaxBwdArgs)
BP_SOFTMAX_NATIVE(bwd_nodrop_bf16_native, (softmax_bwd_rows<bf16, false, true>), SoftmaxBwdArgs)
#endif

template <typename T>
void fwd(const SoftmaxFwdArgs* a) {
  const int threads = cpu::plan_threads(a->rows, a->cols, a->num_threads);
  const bool drop = a->drop.threshold != 0;
  cpu::parallel_rows(a->rows, threads, [a, drop](int, int64_t r0, int64_t r1) {
    std::vector<acc_t<T>> buf(a->cols);
    acc_t<T>* b = buf.data();
    if constexpr (std::is_same_v<T, float>) drop ? fwd_drop_f32(a, r0, r1, b) : fwd_nodrop_f32(a, r0, r1, b);
    if constexpr (std::is_same_v<T, bf16>) {
#if defined(__x86_64__)
      if (cpu::native_bf16()) return drop ? fwd_drop_bf16_native(a, r0, r1, b) : fwd_nodrop_bf16_native(a, r0, r1, b);
#endif
      drop ? fwd_drop_bf16(a, r0, r1, b) : fwd_nodrop_bf16(a, r0, r1, b);
    }
    if constexpr (std::is_same_v<T, double>) drop ? fwd_drop_f64(a, r0, r1, b) : fwd_nodrop_f64(a, r0, r1, b);
  });
}

template <typename T>
void bwd(const SoftmaxBwdArgs* a) {
  const int threads = cpu::plan_threads(a->rows, a->cols, a->num_threads);
  const bool drop = a->drop.threshold != 0;
  cpu::parallel_rows(a->rows, threads, [a, drop](int, int64_t r0, int64_t r1) {
    std::vector<acc_t<T>> buf(2 * a->cols);
    acc_t<T>* b = buf.data();
    if constexpr (std::is_same_v<T, float>) drop ? bwd_drop_f32(a, r0, r1, b) : bwd_nodrop_f32(a, r0, r1, b);
    if constexpr (std::is_same_v<T, bf16>) {
#if defined(__x86_64__)
      if (cpu::native_bf16()) return drop ? bwd_drop_bf16_native(a, r0, r1, b) : bwd_nodrop_bf16_native(a, r0, r1, b);
#endif
      drop ? bwd_drop_bf16(a, r0, r1, b) : bwd_nodrop_bf16(a, r0, r1, b);
    }
    if constexpr (std::is_same_v<T, double>) drop ? bwd_drop_f64(a, r0, r1, b) : bwd_nodrop_f64(a, r0, r1, b);
  });
}

}  // namespace

void softmax_fwd_cpu(const SoftmaxFwdArgs& a) {
  switch (a.dtype) {
    case kBFloat16: return fwd<bf16>(&a);
    case kFloat64: return fwd<double>(&a);
    default: return fwd<float>(&a);
  }
}

void softmax_bwd_cpu(const SoftmaxBwdArgs& a) {
  switch (a.dtype) {
    case kBFloat16: return bwd<bf16>(&a);
    case kFloat64: return bwd<double>(&a);
    default: return bwd<float>(&a);
  }
}

}  // namespace bertperf
