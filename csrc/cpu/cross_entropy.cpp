// cross_entropy on the CPU: OpenMP over rows; each row is staged in an fp32 scratch row (122 KB
// for BERT's vocabulary: L2-resident), so memory sees one read of x and one write each of y and
// grad, and the max, the sum of exponentials and the outputs come from the scratch row. The bias
// gradient is summed in per-thread partial rows, folded at the end. Math: bertperf/cross_entropy.h.
#include <cmath>
#include <type_traits>
#include <vector>

#include "bertperf/cross_entropy.h"
#include "cpu_common.h"

namespace bertperf {
namespace {

// Rows [r0, r1). buf: [cols] fp32 scratch (bf16 only: fp32 and fp64 rows are staged in the
// output rows themselves, y for the logits and grad for the exponentials, which keeps one 122 KB
// array fewer in L2 per row: measured 2x faster than a separate scratch row); part: this
// thread's [cols] dbias partial (or null).
template <typename T>
BP_HD void ce_fwd_rows(const CrossEntropyFwdArgs* a, int64_t r0, int64_t r1, acc_t<T>* buf, acc_t<T>* part) {
  using A = acc_t<T>;
  constexpr bool kStageInOutputs = std::is_same_v<T, A>;
  const int64_t cols = a->cols;
  const A* bias = static_cast<const A*>(a->bias);
  const A scale = static_cast<A>(a->scale);
  for (int64_t r = r0; r < r1; ++r) {
    const T* xr = static_cast<const T*>(a->x) + r * cols;
    T* gr = static_cast<T*>(a->grad) + r * cols;
    const int64_t label = a->labels[r];
    // z: the biased logits, in A
    A* z = buf;
    if constexpr (kStageInOutputs) z = bias ? reinterpret_cast<A*>(static_cast<T*>(a->y) + r * cols)
                                            : reinterpret_cast<A*>(const_cast<T*>(xr));
    if (bias) {
      T* yr = static_cast<T*>(a->y) + r * cols;
#pragma omp simd
      for (int64_t j = 0; j < cols; ++j) {
        const A v = to_acc(xr[j]) + bias[j];
        if constexpr (kStageInOutputs) {
          z[j] = v;
        } else {
          z[j] = v;
          yr[j] = from_acc<T>(v);
        }
      }
    } else if constexpr (!kStageInOutputs) {
#pragma omp simd
      for (int64_t j = 0; j < cols; ++j) z[j] = to_acc(xr[j]);
    }
    const A top = cpu::row_max(z, cols);
    const A picked = z[label];
    // e = exp(z - top): into the grad row (fp32/fp64) or in place in the scratch row (bf16)
    A* e = kStageInOutputs ? reinterpret_cast<A*>(gr) : buf;
#pragma omp simd
    for (int64_t j = 0; j < cols; ++j) e[j] = fast_exp_nonpositive(z[j] - top);
    const A sum = cpu::row_sum(e, cols);
    const A inv = A(1) / sum;
    static_cast<A*>(a->loss)[r] = top + std::log(sum) - picked;
    a->correct[r] = picked == top ? 1 : 0;
    if (part) {
#pragma omp simd
      for (int64_t j = 0; j < cols; ++j) {
        const A g = ce_grad(e[j] * inv, j == label, scale);
        gr[j] = from_acc<T>(g);
        part[j] += g;
      }
    } else {
#pragma omp simd
      for (int64_t j = 0; j < cols; ++j) gr[j] = from_acc<T>(ce_grad(e[j] * inv, j == label, scale));
    }
  }
}

BP_CPU_MULTIVERSION(ce_fwd_f32, ce_fwd_rows<float>)
BP_CPU_MULTIVERSION(ce_fwd_bf16, ce_fwd_rows<bf16>)
BP_CPU_MULTIVERSION(ce_fwd_f64, ce_fwd_rows<double>)

template <typename T>
void ce_fwd(const CrossEntropyFwdArgs* a) {
  using A = acc_t<T>;
  const int64_t cols = a->cols;
  const int threads = cpu::plan_threads(a->rows, cols, a->num_threads);
  std::vector<A> partial(a->dbias ? static_cast<size_t>(threads) * cols : 0, A(0));
  cpu::parallel_rows(a->rows, threads, [a, cols, &partial](int t, int64_t r0, int64_t r1) {
    std::vector<A> buf(cols);
    A* part = partial.empty() ? nullptr : partial.data() + static_cast<int64_t>(t) * cols;
    if constexpr (std::is_same_v<T, float>) ce_fwd_f32(a, r0, r1, buf.data(), part);
    if constexpr (std::is_same_v<T, bf16>) ce_fwd_bf16(a, r0, r1, buf.data(), part);
    if constexpr (std::is_same_v<T, double>) ce_fwd_f64(a, r0, r1, buf.data(), part);
  });
  if (a->dbias) cpu::sum_partials(partial.data(), threads, cols, static_cast<A*>(a->dbias));
}

}  // namespace

void cross_entropy_fwd_cpu(const CrossEntropyFwdArgs& a) {
  switch (a.dtype) {
    case kBFloat16: return ce_fwd<bf16>(&a);
    case kFloat64: return ce_fwd<double>(&a);
    default: return ce_fwd<float>(&a);
  }
}

}  // namespace bertperf
