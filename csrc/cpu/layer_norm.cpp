// layer_norm on the CPU: OpenMP over rows, vectorized loops over the shared math in
// bertperf/layer_norm.h. One row is staged in an fp32 scratch row (L1-resident for BERT widths)
// so x, bias and residual are read once from memory and the variance is a true two-pass one.
#include <type_traits>
#include <vector>

#include "bertperf/layer_norm.h"
#include "cpu_common.h"

namespace bertperf {
namespace {

// buf[j] = x[j] + bias[j] + residual[j] in A; returns the row sum.
template <typename T, typename A>
BP_HD A ln_load_row(const T* xr, const T* rr, const A* bias, int64_t cols, A* buf) {
  A sum = 0;
  if (bias && rr) {
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < cols; ++j) {
      buf[j] = to_acc(xr[j]) + bias[j] + to_acc(rr[j]);
      sum += buf[j];
    }
  } else if (rr) {
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < cols; ++j) {
      buf[j] = to_acc(xr[j]) + to_acc(rr[j]);
      sum += buf[j];
    }
  } else if (bias) {
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < cols; ++j) {
      buf[j] = to_acc(xr[j]) + bias[j];
      sum += buf[j];
    }
  } else {
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < cols; ++j) {
      buf[j] = to_acc(xr[j]);
      sum += buf[j];
    }
  }
  return sum;
}

// kNative (bf16 at ISA level 5 only): the output row is finished in buf (fp32, in place) and
// stored with vcvtneps2bf16 (cpu::store_bf16_native) instead of the bit-trick rounding.
template <typename T, bool kNative = false>
BP_HD void ln_fwd_rows(const LayerNormFwdArgs* a, int64_t r0, int64_t r1, acc_t<T>* buf) {
  using A = acc_t<T>;
  const int64_t cols = a->cols;
  const T* x = static_cast<const T*>(a->x);
  const T* res = static_cast<const T*>(a->residual);
  const A* bias = static_cast<const A*>(a->bias);
  const A* gamma = static_cast<const A*>(a->gamma);
  const A* beta = static_cast<const A*>(a->beta);
  A* mean_out = static_cast<A*>(a->mean);
  A* rstd_out = static_cast<A*>(a->rstd);
  T* y = static_cast<T*>(a->y);
  const A inv_cols = A(1) / static_cast<A>(cols);
  const A eps = static_cast<A>(a->eps);
  for (int64_t r = r0; r < r1; ++r) {
    const A mean =
        ln_load_row(x + r * cols, res ? res + r * cols : nullptr, bias, cols, buf) * inv_cols;
    A sq = 0;
#pragma omp simd reduction(+ : sq)
    for (int64_t j = 0; j < cols; ++j) {
      const A d = buf[j] - mean;
      sq += d * d;
    }
    const A rstd = ln_rstd(sq * inv_cols, eps);
    T* yr = y + r * cols;
#if defined(__x86_64__)
    if constexpr (kNative) {
#pragma omp simd
      for (int64_t j = 0; j < cols; ++j) buf[j] = ln_output(buf[j], mean, rstd, gamma[j], beta[j]);
      cpu::store_bf16_native(buf, yr, cols);
    } else
#endif
    {
#pragma omp simd
      for (int64_t j = 0; j < cols; ++j)
        yr[j] = from_acc<T>(ln_output(buf[j], mean, rstd, gamma[j], beta[j]));
    }
    mean_out[r] = mean;
    rstd_out[r] = rstd;
  }
}

// xhat of element j of one row, by one of the two backward sources (see bertperf/layer_norm.h).
// kMode: 0 = from the output (yr, beta, inv_gamma); otherwise (kMode & 4) recompute
// s = x (+ bias if kMode & 1) (+ residual if kMode & 2).
template <int kMode, typename T, typename A>
BP_HD A ln_bwd_xhat(const T* xr, const T* rr, const A* bias, const T* yr, const A* beta,
                    const A* inv_gamma, A mean, A rstd, int64_t j) {
  if constexpr (kMode == 0) {
    return ln_xhat_from_output(to_acc(yr[j]), beta[j], inv_gamma[j]);
  } else {
    A s = to_acc(xr[j]);
    if constexpr ((kMode & 1) != 0) s += bias[j];
    if constexpr ((kMode & 2) != 0) s += to_acc(rr[j]);
    return ln_xhat(s, mean, rstd);
  }
}

// g = dy * gamma, rounded to A in both passes: letting FP contraction fuse it into an FMA in
// one pass and not the other makes g - mean(g) a rounding error instead of 0 on a constant
// row (one column), which rstd = 1/sqrt(eps) then blows up to ~0.03.
template <typename A>
BP_HD A ln_rounded(A v) {
  return __builtin_assoc_barrier(v);
}

// Rows [r0, r1) of the backward, two passes per row and no scratch rows: pass 1 sums g and
// g * xhat (and the dgamma/dbeta partials), pass 2 recomputes xhat and g from the row, which is
// then in L1, and writes dx. Staging xhat and g in scratch rows measured ~20% slower (two more
// stores and loads per element). part: this thread's partial column sums, [0, cols) dgamma,
// [cols, 2 cols) dbeta, [2 cols, 3 cols) dbias.
// kNative (bf16 at ISA level 5): dx rows are finished in `row` (fp32 scratch, cols) and stored
// with vcvtneps2bf16.
template <int kMode, typename T, bool kNative = false>
BP_HD void ln_bwd_rows(const LayerNormBwdArgs* a, int64_t r0, int64_t r1,
                       const acc_t<T>* inv_gamma, acc_t<T>* part, acc_t<T>* row = nullptr) {
  using A = acc_t<T>;
  const int64_t cols = a->cols;
  const T* dy = static_cast<const T*>(a->dy);
  const T* x = static_cast<const T*>(a->x);
  const T* res = static_cast<const T*>(a->residual);
  const T* y = static_cast<const T*>(a->y);
  T* dx = static_cast<T*>(a->dx);
  const A* bias = static_cast<const A*>(a->bias);
  const A* beta = static_cast<const A*>(a->beta);
  const A* gamma = static_cast<const A*>(a->gamma);
  const A* mean_in = static_cast<const A*>(a->mean);
  const A* rstd_in = static_cast<const A*>(a->rstd);
  A* pg = part;
  A* pb = part + cols;
  A* pbias = part + 2 * cols;
  const bool want_dbias = a->dbias != nullptr;
  const A inv_cols = A(1) / static_cast<A>(cols);
  for (int64_t r = r0; r < r1; ++r) {
    const A mean = kMode == 0 ? A(0) : mean_in[r];
    const A rstd = rstd_in[r];
    const T* xr = kMode == 0 ? nullptr : x + r * cols;
    const T* rr = (kMode & 2) != 0 ? res + r * cols : nullptr;
    const T* yr = kMode == 0 ? y + r * cols : nullptr;
    const T* dyr = dy + r * cols;
    A sum_g = 0, sum_gx = 0;
#pragma omp simd reduction(+ : sum_g, sum_gx)
    for (int64_t j = 0; j < cols; ++j) {
      const A xhat = ln_bwd_xhat<kMode>(xr, rr, bias, yr, beta, inv_gamma, mean, rstd, j);
      const A d = to_acc(dyr[j]);
      const A g = ln_rounded(d * gamma[j]);
      sum_g += g;
      sum_gx += g * xhat;
      pg[j] += d * xhat;
      pb[j] += d;
    }
    const A mean_g = sum_g * inv_cols;
    const A mean_gx = sum_gx * inv_cols;
    T* dxr = dx + r * cols;
#if defined(__x86_64__)
    if constexpr (kNative) {
#pragma omp simd
      for (int64_t j = 0; j < cols; ++j) {
        const A xhat = ln_bwd_xhat<kMode>(xr, rr, bias, yr, beta, inv_gamma, mean, rstd, j);
        const A ds = ln_grad_input(ln_rounded(to_acc(dyr[j]) * gamma[j]), xhat, rstd, mean_g, mean_gx);
        row[j] = ds;
        pbias[j] += want_dbias ? ds : A(0);
      }
      cpu::store_bf16_native(row, dxr, cols);
      continue;
    }
#endif
    if (want_dbias) {
#pragma omp simd
      for (int64_t j = 0; j < cols; ++j) {
        const A xhat = ln_bwd_xhat<kMode>(xr, rr, bias, yr, beta, inv_gamma, mean, rstd, j);
        const A ds = ln_grad_input(ln_rounded(to_acc(dyr[j]) * gamma[j]), xhat, rstd, mean_g, mean_gx);
        dxr[j] = from_acc<T>(ds);
        pbias[j] += ds;
      }
    } else {
#pragma omp simd
      for (int64_t j = 0; j < cols; ++j) {
        const A xhat = ln_bwd_xhat<kMode>(xr, rr, bias, yr, beta, inv_gamma, mean, rstd, j);
        dxr[j] = from_acc<T>(ln_grad_input(ln_rounded(to_acc(dyr[j]) * gamma[j]), xhat, rstd, mean_g, mean_gx));
      }
    }
  }
}

// One multiversioned entry per dtype: dispatches on the mode outside the row loops.
template <typename T>
BP_HD void ln_bwd_rows_any(const LayerNormBwdArgs* a, int mode, int64_t r0, int64_t r1,
                           const acc_t<T>* inv_gamma, acc_t<T>* part) {
  switch (mode) {
    case 0: return ln_bwd_rows<0, T>(a, r0, r1, inv_gamma, part);
    case 4: return ln_bwd_rows<4, T>(a, r0, r1, inv_gamma, part);
    case 5: return ln_bwd_rows<5, T>(a, r0, r1, inv_gamma, part);
    case 6: return ln_bwd_rows<6, T>(a, r0, r1, inv_gamma, part);
    default: return ln_bwd_rows<7, T>(a, r0, r1, inv_gamma, part);
  }
}

#if defined(__x86_64__)
BP_TARGET_AVX512BF16 void ln_fwd_bf16_native(const LayerNormFwdArgs* a, int64_t r0, int64_t r1, float* buf) {
  ln_fwd_rows<bf16, true>(a, r0, r1, buf);
}
// bf16 always recomputes (modes 4..7, see ln_bwd_mode).
BP_TARGET_AVX512BF16 void ln_bwd_bf16_native(const LayerNormBwdArgs* a, int mode, int64_t r0, int64_t r1,
                                             const float* inv_gamma, float* part, float* row) {
  switch (mode) {
    case 4: return ln_bwd_rows<4, bf16, true>(a, r0, r1, inv_gamma, part, row);
    case 5: return ln_bwd_rows<5, bf16, true>(a, r0, r1, inv_gamma, part, row);
    case 6: return ln_bwd_rows<6, bf16, true>(a, r0, r1, inv_gamma, part, row);
    default: return ln_bwd_rows<7, bf16, true>(a, r0, r1, inv_gamma, part, row);
  }
}
#endif

BP_CPU_MULTIVERSION(ln_fwd_f32, ln_fwd_rows<float>)
BP_CPU_MULTIVERSION(ln_fwd_bf16, ln_fwd_rows<bf16>)
BP_CPU_MULTIVERSION(ln_bwd_f32, ln_bwd_rows_any<float>)
BP_CPU_MULTIVERSION(ln_bwd_bf16, ln_bwd_rows_any<bf16>)
BP_CPU_MULTIVERSION(ln_fwd_f64, ln_fwd_rows<double>)
BP_CPU_MULTIVERSION(ln_bwd_f64, ln_bwd_rows_any<double>)

template <typename T>
void ln_fwd(const LayerNormFwdArgs* a) {
  const int threads = cpu::plan_threads(a->rows, a->cols, a->num_threads);
  cpu::parallel_rows(a->rows, threads, [a](int, int64_t r0, int64_t r1) {
    std::vector<acc_t<T>> buf(a->cols);
    if constexpr (std::is_same_v<T, float>) ln_fwd_f32(a, r0, r1, buf.data());
    if constexpr (std::is_same_v<T, bf16>) {
#if defined(__x86_64__)
      if (cpu::native_bf16()) return ln_fwd_bf16_native(a, r0, r1, buf.data());
#endif
      ln_fwd_bf16(a, r0, r1, buf.data());
    }
    if constexpr (std::is_same_v<T, double>) ln_fwd_f64(a, r0, r1, buf.data());
  });
}

// The backward's source of xhat: 0 (from the output) when y and beta are given, T is not bf16
// (a bf16 y holds xhat to 2^-9 only; recomputing s from x and residual keeps fp32 accuracy) and
// every column is invertible; else 4 + bias? + 2 * residual? (recompute s). Fills inv_gamma in
// mode 0.
template <typename T>
int ln_bwd_mode(const LayerNormBwdArgs* a, acc_t<T>* inv_gamma) {
  using A = acc_t<T>;
  const int recompute = 4 | (a->bias ? 1 : 0) | (a->residual ? 2 : 0);
  if (std::is_same_v<T, bf16> || a->y == nullptr || a->beta == nullptr) return recompute;
  const A* gamma = static_cast<const A*>(a->gamma);
  const A* beta = static_cast<const A*>(a->beta);
  for (int64_t j = 0; j < a->cols; ++j) {
    if (!ln_output_invertible(gamma[j], beta[j])) return recompute;
    inv_gamma[j] = A(1) / gamma[j];
  }
  return 0;
}

template <typename T>
void ln_bwd(const LayerNormBwdArgs* a) {
  using A = acc_t<T>;
  const int64_t cols = a->cols;
  const int threads = cpu::plan_threads(a->rows, cols, a->num_threads);
  // One allocation: inv_gamma [cols], then the per-thread partials [threads, 3, cols].
  std::vector<A> scratch(static_cast<size_t>(1 + 3 * threads) * cols, A(0));
  A* inv_gamma = scratch.data();
  A* parts = inv_gamma + cols;
  const int mode = ln_bwd_mode<T>(a, inv_gamma);
  cpu::parallel_rows(a->rows, threads, [a, mode, inv_gamma, parts, cols](int t, int64_t r0, int64_t r1) {
    A* part = parts + static_cast<int64_t>(t) * 3 * cols;
    if constexpr (std::is_same_v<T, float>) ln_bwd_f32(a, mode, r0, r1, inv_gamma, part);
    if constexpr (std::is_same_v<T, bf16>) {
#if defined(__x86_64__)
      if (cpu::native_bf16()) {
        std::vector<float> row(cols);
        return ln_bwd_bf16_native(a, mode, r0, r1, inv_gamma, part, row.data());
      }
#endif
      ln_bwd_bf16(a, mode, r0, r1, inv_gamma, part);
    }
    if constexpr (std::is_same_v<T, double>) ln_bwd_f64(a, mode, r0, r1, inv_gamma, part);
  });
  A* dgamma = static_cast<A*>(a->dgamma);
  A* dbeta = static_cast<A*>(a->dbeta);
  A* dbias = static_cast<A*>(a->dbias);
  for (int64_t j = 0; j < cols; ++j) {
    A g = 0, b = 0, db = 0;
    for (int t = 0; t < threads; ++t) {
      const A* part = parts + static_cast<int64_t>(t) * 3 * cols;
      g += part[j];
      b += part[cols + j];
      db += part[2 * cols + j];
    }
    dgamma[j] = g;
    dbeta[j] = b;
    if (dbias) dbias[j] = db;
  }
}

}  // namespace

void layer_norm_fwd_cpu(const LayerNormFwdArgs& a) {
  switch (a.dtype) {
    case kBFloat16: return ln_fwd<bf16>(&a);
    case kFloat64: return ln_fwd<double>(&a);
    default: return ln_fwd<float>(&a);
  }
}

void layer_norm_bwd_cpu(const LayerNormBwdArgs& a) {
  switch (a.dtype) {
    case kBFloat16: return ln_bwd<bf16>(&a);
    case kFloat64: return ln_bwd<double>(&a);
    default: return ln_bwd<float>(&a);
  }
}

}  // namespace bertperf
