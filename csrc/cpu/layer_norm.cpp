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

template <typename T>
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
#pragma omp simd
    for (int64_t j = 0; j < cols; ++j)
      yr[j] = from_acc<T>(ln_output(buf[j], mean, rstd, gamma[j], beta[j]));
    mean_out[r] = mean;
    rstd_out[r] = rstd;
  }
}

// buf: 2 * cols scratch. Per-thread partial column sums: part[0..cols) dgamma, [cols..2cols) dbeta, [2cols..3cols) dbias.
template <typename T>
BP_HD void ln_bwd_rows(const LayerNormBwdArgs* a, int64_t r0, int64_t r1, acc_t<T>* buf,
                       acc_t<T>* part) {
  using A = acc_t<T>;
  const int64_t cols = a->cols;
  const T* dy = static_cast<const T*>(a->dy);
  const T* x = static_cast<const T*>(a->x);
  const T* res = static_cast<const T*>(a->residual);
  T* dx = static_cast<T*>(a->dx);
  const A* bias = static_cast<const A*>(a->bias);
  const A* gamma = static_cast<const A*>(a->gamma);
  const A* mean_in = static_cast<const A*>(a->mean);
  const A* rstd_in = static_cast<const A*>(a->rstd);
  A* pg = part;
  A* pb = part + cols;
  A* pbias = part + 2 * cols;
  // g = dy * gamma is kept in a second scratch row: recomputing it in the last loop would let
  // FP contraction round it differently from the g inside mean(g).
  A* gbuf = buf + cols;
  const A inv_cols = A(1) / static_cast<A>(cols);
  for (int64_t r = r0; r < r1; ++r) {
    ln_load_row(x + r * cols, res ? res + r * cols : nullptr, bias, cols, buf);
    const A mean = mean_in[r];
    const A rstd = rstd_in[r];
    const T* dyr = dy + r * cols;
    A sum_g = 0, sum_gx = 0;
#pragma omp simd reduction(+ : sum_g, sum_gx)
    for (int64_t j = 0; j < cols; ++j) {
      const A xhat = ln_xhat(buf[j], mean, rstd);
      const A d = to_acc(dyr[j]);
      const A g = d * gamma[j];
      buf[j] = xhat;
      gbuf[j] = g;
      sum_g += g;
      sum_gx += g * xhat;
      pg[j] += d * xhat;
      pb[j] += d;
    }
    const A mean_g = sum_g * inv_cols;
    const A mean_gx = sum_gx * inv_cols;
    T* dxr = dx + r * cols;
    if (a->dbias) {
#pragma omp simd
      for (int64_t j = 0; j < cols; ++j) {
        const A ds = ln_grad_input(gbuf[j], buf[j], rstd, mean_g, mean_gx);
        dxr[j] = from_acc<T>(ds);
        pbias[j] += ds;
      }
    } else {
#pragma omp simd
      for (int64_t j = 0; j < cols; ++j)
        dxr[j] = from_acc<T>(ln_grad_input(gbuf[j], buf[j], rstd, mean_g, mean_gx));
    }
  }
}

BP_CPU_MULTIVERSION(ln_fwd_f32, ln_fwd_rows<float>)
BP_CPU_MULTIVERSION(ln_fwd_bf16, ln_fwd_rows<bf16>)
BP_CPU_MULTIVERSION(ln_bwd_f32, ln_bwd_rows<float>)
BP_CPU_MULTIVERSION(ln_bwd_bf16, ln_bwd_rows<bf16>)
BP_CPU_MULTIVERSION(ln_fwd_f64, ln_fwd_rows<double>)
BP_CPU_MULTIVERSION(ln_bwd_f64, ln_bwd_rows<double>)

template <typename T>
void ln_fwd(const LayerNormFwdArgs* a) {
  const int threads = cpu::plan_threads(a->rows, a->cols, a->num_threads);
  cpu::parallel_rows(a->rows, threads, [a](int, int64_t r0, int64_t r1) {
    std::vector<acc_t<T>> buf(a->cols);
    if constexpr (std::is_same_v<T, float>) ln_fwd_f32(a, r0, r1, buf.data());
    if constexpr (std::is_same_v<T, bf16>) ln_fwd_bf16(a, r0, r1, buf.data());
    if constexpr (std::is_same_v<T, double>) ln_fwd_f64(a, r0, r1, buf.data());
  });
}

template <typename T>
void ln_bwd(const LayerNormBwdArgs* a) {
  using A = acc_t<T>;
  const int64_t cols = a->cols;
  const int threads = cpu::plan_threads(a->rows, cols, a->num_threads);
  std::vector<A> partial(static_cast<size_t>(threads) * 3 * cols, A(0));
  A* parts = partial.data();
  cpu::parallel_rows(a->rows, threads, [a, parts, cols](int t, int64_t r0, int64_t r1) {
    std::vector<A> buf(2 * cols);
    A* part = parts + static_cast<int64_t>(t) * 3 * cols;
    if constexpr (std::is_same_v<T, float>) ln_bwd_f32(a, r0, r1, buf.data(), part);
    if constexpr (std::is_same_v<T, bf16>) ln_bwd_bf16(a, r0, r1, buf.data(), part);
    if constexpr (std::is_same_v<T, double>) ln_bwd_f64(a, r0, r1, buf.data(), part);
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
