// lamb on the CPU: OpenMP over kLambChunk-element chunks, vectorized loops over the math in
// bertperf/lamb.h (compiled for AVX-512, AVX2 and the baseline by BP_CPU_MULTIVERSION).
//
// The loops are memory-bound (one core here streams ~12 GB/s; the sqrt and division are hidden),
// so the work is about passes over memory. Chunks are handed out dynamically from atomic
// cursors, never by a static split: a thread that the OS deschedules (the machine is shared, the
// trainer has other threads) only delays the chunk it holds. The fused step has no barrier:
// threads take stage-1 chunks in tensor order; the thread finishing a tensor's last stage-1 chunk
// turns its norms into the step size and marks it ready; any thread prefers stage-2 chunks of
// ready tensors (in tensor order, each tensor's chunks backwards: the chunks stage 1 read last are
// the likeliest to still be cached) and otherwise runs ahead on stage 1. Per-chunk partial sums
// are reduced per tensor in chunk order, so results do not depend on threads or scheduling.
#include <algorithm>
#include <atomic>
#include <memory>
#include <vector>

#include "bertperf/lamb.h"
#include "cpu_common.h"

namespace bertperf {
namespace {

// ---- per-chunk loops (always inline: compiled inside each ISA clone) ---------------------------

// Software prefetch distance, in elements: one core streaming several arrays is limited by its
// outstanding misses; prefetching 2 KiB ahead was ~8% faster in a 4-stream microbenchmark here.
// Prefetches past the end of an array are harmless (they never fault).
constexpr int64_t kPrefetchElems = 512;

// Prefetches the sub-block of x that the loop reaches kPrefetchElems elements from now.
template <typename T>
BP_HD void prefetch_ahead(const T* x) {
  const char* base = reinterpret_cast<const char*>(x + kPrefetchElems);
  for (int64_t off = 0; off < kLambSubBlock * static_cast<int64_t>(sizeof(T)); off += 64)
    __builtin_prefetch(base + off);
}

template <typename T>
BP_HD void chunk_sq(const T* x, int64_t len, double* out) {
  double acc = 0.0;
  for (int64_t b = 0; b < len; b += kLambSubBlock) {
    const int64_t e = std::min(len, b + kLambSubBlock);
    prefetch_ahead(x + b);
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t i = b; i < e; ++i) {
      const float xi = to_acc(x[i]);
      s += xi * xi;
    }
    acc += s;
  }
  *out = acc;
}

// Stage 1 over len elements: m, v in place; out[0] = sum p^2, out[1] = sum u^2.
template <typename G>
BP_HD void chunk_moments(const LambScalars* sp_, const float* p, const G* g, float* m, float* v,
                         int64_t len, double* out) {
  const LambScalars s = *sp_;  // a local copy: the stores to m and v cannot alias it
  double acc_p = 0.0, acc_u = 0.0;
  for (int64_t b = 0; b < len; b += kLambSubBlock) {
    const int64_t e = std::min(len, b + kLambSubBlock);
    prefetch_ahead(p + b);
    prefetch_ahead(g + b);
    prefetch_ahead(m + b);
    prefetch_ahead(v + b);
    float sp = 0.0f, su = 0.0f;
#pragma omp simd reduction(+ : sp, su)
    for (int64_t i = b; i < e; ++i) {
      float mi = m[i], vi = v[i];
      lamb_moments(s, to_acc(g[i]), mi, vi);
      m[i] = mi;
      v[i] = vi;
      const float pi = p[i];
      const float u = lamb_update(s, pi, mi, vi);
      sp += pi * pi;
      su += u * u;
    }
    acc_p += sp;
    acc_u += su;
  }
  out[0] = acc_p;
  out[1] = acc_u;
}

// Stage 2 over len elements: p -= step * u; out (bf16 parameter) = p if out is not null.
BP_HD void chunk_apply(const LambScalars* sp_, float step, float* p, const float* m,
                       const float* v, bf16* out, int64_t len) {
  const LambScalars s = *sp_;
  for (int64_t b = 0; b < len; b += kLambSubBlock) {
    const int64_t e = std::min(len, b + kLambSubBlock);
    prefetch_ahead(p + b);
    prefetch_ahead(m + b);
    prefetch_ahead(v + b);
    if (out) {
#pragma omp simd
      for (int64_t i = b; i < e; ++i) {
        const float pi = p[i] - step * lamb_update(s, p[i], m[i], v[i]);
        p[i] = pi;
        out[i] = from_acc<bf16>(pi);
      }
    } else {
#pragma omp simd
      for (int64_t i = b; i < e; ++i) p[i] = p[i] - step * lamb_update(s, p[i], m[i], v[i]);
    }
  }
}

BP_CPU_MULTIVERSION(chunk_sq_f32, chunk_sq<float>)
BP_CPU_MULTIVERSION(chunk_sq_bf16, chunk_sq<bf16>)
BP_CPU_MULTIVERSION(chunk_moments_f32, chunk_moments<float>)
BP_CPU_MULTIVERSION(chunk_moments_bf16, chunk_moments<bf16>)
BP_CPU_MULTIVERSION(chunk_apply_any, chunk_apply)

// ---- chunk bookkeeping -------------------------------------------------------------------------

struct ChunkRef {
  int64_t tensor, begin, len;  // elements [begin, begin + len) of tensor
};

inline ChunkRef chunk_ref(const int64_t* numel, const int64_t* chunk_start, int64_t tensor,
                          int64_t c) {
  const int64_t begin = (c - chunk_start[tensor]) * kLambChunk;
  return {tensor, begin, std::min(kLambChunk, numel[tensor] - begin)};
}

// The chunk that global stage-2 position k (in [chunk_start[tensor], chunk_start[tensor + 1]))
// maps to: each tensor's chunks are taken backwards.
inline int64_t reversed_in_tensor(const int64_t* chunk_start, int64_t tensor, int64_t k) {
  return chunk_start[tensor] + chunk_start[tensor + 1] - 1 - k;
}

// Per-tensor sums of the per-chunk partials (width doubles per chunk), in chunk order.
inline void tensor_sums(const double* part, const int64_t* chunk_start, int64_t tensor, int width,
                        double* out) {
  for (int k = 0; k < width; ++k) out[k] = 0.0;
  for (int64_t c = chunk_start[tensor]; c < chunk_start[tensor + 1]; ++c)
    for (int k = 0; k < width; ++k) out[k] += part[c * width + k];
}

int plan(int64_t elems, int max_threads) {
  return cpu::plan_threads(elems, 1, max_threads);
}

int64_t total_elems(const int64_t* numel, int64_t n) {
  int64_t total = 0;
  for (int64_t i = 0; i < n; ++i) total += numel[i];
  return total;
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// Runs fn(k) for k in [0, count) on `threads` threads, each k exactly once, handed out in
// increasing order from an atomic cursor.
template <typename Fn>
void dynamic_for(int64_t count, int threads, Fn&& fn) {
#if defined(_OPENMP)
  if (threads > 1) {
    std::atomic<int64_t> next{0};
#pragma omp parallel num_threads(threads)
    {
      for (int64_t k = next.fetch_add(1, std::memory_order_relaxed); k < count;
           k = next.fetch_add(1, std::memory_order_relaxed))
        fn(k);
    }
    return;
  }
#endif
  for (int64_t k = 0; k < count; ++k) fn(k);
}

void moments_chunk(const LambArgs& a, const ChunkRef& r, double* out) {
  const LambTensors& t = a.t;
  const float* p = static_cast<const float*>(t.master[r.tensor]) + r.begin;
  float* m = static_cast<float*>(t.exp_avg[r.tensor]) + r.begin;
  float* v = static_cast<float*>(t.exp_avg_sq[r.tensor]) + r.begin;
  if (t.grad_dtype == kBFloat16)
    chunk_moments_bf16(&a.s, p, static_cast<const bf16*>(t.grad[r.tensor]) + r.begin, m, v, r.len, out);
  else
    chunk_moments_f32(&a.s, p, static_cast<const float*>(t.grad[r.tensor]) + r.begin, m, v, r.len, out);
}

void apply_chunk(const LambArgs& a, const ChunkRef& r, float step) {
  const LambTensors& t = a.t;
  float* p = static_cast<float*>(t.master[r.tensor]) + r.begin;
  const float* m = static_cast<const float*>(t.exp_avg[r.tensor]) + r.begin;
  const float* v = static_cast<const float*>(t.exp_avg_sq[r.tensor]) + r.begin;
  bf16* out = t.param && t.param[r.tensor] ? static_cast<bf16*>(t.param[r.tensor]) + r.begin : nullptr;
  chunk_apply_any(&a.s, step, p, m, v, out, r.len);
}

// The fused step's shared state: two cursors and, per tensor, its pending stage-1 chunks, a ready
// flag and the step size (written before the flag is released).
class StepSchedule {
 public:
  StepSchedule(const LambArgs& a, double* part)
      : a_(a), t_(a.t), part_(part), chunks_(a.t.chunk_start[a.t.n]),
        pending_(new std::atomic<int64_t>[a.t.n]), ready_(new std::atomic<int>[a.t.n]),
        step_(static_cast<size_t>(a.t.n)) {
    for (int64_t i = 0; i < t_.n; ++i) {
      pending_[i].store(t_.chunk_start[i + 1] - t_.chunk_start[i], std::memory_order_relaxed);
      ready_[i].store(0, std::memory_order_relaxed);
    }
  }

  // One worker: loops until every stage-2 chunk has been taken.
  void work() {
    for (;;) {
      int64_t k = next2_.load(std::memory_order_acquire);
      if (k >= chunks_) return;
      const int64_t i = lamb_owner(t_.chunk_start, t_.n, k);
      if (ready_[i].load(std::memory_order_acquire)) {
        if (next2_.compare_exchange_weak(k, k + 1, std::memory_order_acq_rel)) {
          const int64_t c = reversed_in_tensor(t_.chunk_start, i, k);
          apply_chunk(a_, chunk_ref(t_.numel, t_.chunk_start, i, c), step_[i]);
        }
        continue;
      }
      const int64_t c = next1_.fetch_add(1, std::memory_order_relaxed);
      if (c < chunks_) {
        stage1(c);
        continue;
      }
      cpu_relax();  // stage 1 is all taken; another thread is finishing tensor i
    }
  }

 private:
  void stage1(int64_t c) {
    const int64_t i = lamb_owner(t_.chunk_start, t_.n, c);
    moments_chunk(a_, chunk_ref(t_.numel, t_.chunk_start, i, c), &part_[2 * c]);
    // acq_rel: the last decrement sees every other chunk's partial sums of tensor i.
    if (pending_[i].fetch_sub(1, std::memory_order_acq_rel) == 1) {
      double sq[2];
      tensor_sums(part_, t_.chunk_start, i, 2, sq);
      step_[i] = static_cast<float>(lamb_step_size(a_.s.lr, a_.s.adapt, sq[0], sq[1]));
      ready_[i].store(1, std::memory_order_release);
    }
  }

  const LambArgs& a_;
  const LambTensors& t_;
  double* part_;
  const int64_t chunks_;
  std::atomic<int64_t> next1_{0}, next2_{0};
  std::unique_ptr<std::atomic<int64_t>[]> pending_;
  std::unique_ptr<std::atomic<int>[]> ready_;
  std::vector<float> step_;
};

}  // namespace

void lamb_sq_norms_cpu(const LambSqNormArgs& a) {
  const int64_t chunks = a.chunk_start[a.n];
  std::vector<double> part(static_cast<size_t>(chunks));
  const int threads = plan(total_elems(a.numel, a.n), a.num_threads);
  // Backwards: the first tensors' gradients are read last, so they are the likeliest to still be
  // cached when the step starts with them.
  dynamic_for(chunks, threads, [&](int64_t k) {
    const int64_t c = chunks - 1 - k;
    const int64_t i = lamb_owner(a.chunk_start, a.n, c);
    const ChunkRef r = chunk_ref(a.numel, a.chunk_start, i, c);
    if (a.dtype == kBFloat16)
      chunk_sq_bf16(static_cast<const bf16*>(a.x[i]) + r.begin, r.len, &part[c]);
    else
      chunk_sq_f32(static_cast<const float*>(a.x[i]) + r.begin, r.len, &part[c]);
  });
  for (int64_t i = 0; i < a.n; ++i) tensor_sums(part.data(), a.chunk_start, i, 1, &a.out[i]);
}

void lamb_update_moments_cpu(const LambArgs& a) {
  const LambTensors& t = a.t;
  const int64_t chunks = t.chunk_start[t.n];
  std::vector<double> part(static_cast<size_t>(2 * chunks));
  const int threads = plan(total_elems(t.numel, t.n), a.num_threads);
  dynamic_for(chunks, threads, [&](int64_t c) {
    const int64_t i = lamb_owner(t.chunk_start, t.n, c);
    moments_chunk(a, chunk_ref(t.numel, t.chunk_start, i, c), &part[2 * c]);
  });
  for (int64_t i = 0; i < t.n; ++i) tensor_sums(part.data(), t.chunk_start, i, 2, &a.sq_norms[2 * i]);
}

void lamb_apply_update_cpu(const LambArgs& a) {
  const LambTensors& t = a.t;
  const int64_t chunks = t.chunk_start[t.n];
  const int threads = plan(total_elems(t.numel, t.n), a.num_threads);
  dynamic_for(chunks, threads, [&](int64_t c) {
    const int64_t i = lamb_owner(t.chunk_start, t.n, c);
    apply_chunk(a, chunk_ref(t.numel, t.chunk_start, i, c), static_cast<float>(a.step_sizes[i]));
  });
}

void lamb_step_cpu(const LambArgs& a) {
  const LambTensors& t = a.t;
  std::vector<double> part(static_cast<size_t>(2 * t.chunk_start[t.n]));
  StepSchedule schedule(a, part.data());
  const int threads = plan(total_elems(t.numel, t.n), a.num_threads);
#if defined(_OPENMP)
  if (threads > 1) {
#pragma omp parallel num_threads(threads)
    schedule.work();
    return;
  }
#endif
  schedule.work();
}

}  // namespace bertperf
