// torch bindings for the attention GEMMs on the packed QKV layout (see bertperf/attention_gemm.h).
// CPU build only (there is no CUDA kernel: on a GPU the model's attention is SDPA).
//   attention_gemm_available() -> bool
//   attention_scores(qkv [B,S,3h], heads) -> scores [B,A,S,S]           (q k^T, unscaled)
//   attention_context(probs [B,A,S,S], qkv, heads) -> ctx [B,S,h]         (probs v)
//   attention_context_bwd(dctx [B,S,h], probs, qkv, heads) -> (dprobs [B,A,S,S], dqkv [B,S,3h])
//       dqkv holds dv; its q and k columns are uninitialised until attention_scores_bwd
//   attention_scores_bwd(dscores [B,A,S,S], qkv, dqkv!, heads) -> ()     (writes dq, dk into dqkv)
// All fp32, contiguous (checked); heads must divide h.
#if !defined(BERTPERF_CUDA)
#include "common.h"

#include "bertperf/attention_gemm.h"

namespace bertperf {
namespace bind {
namespace {

// Checks qkv and returns the problem's dimensions.
AttentionDims dims_of(const Tensor& qkv, int64_t heads, const char* op) {
  TORCH_CHECK(qkv.device().is_cpu() && qkv.scalar_type() == at::kFloat && qkv.is_contiguous() &&
                  qkv.dim() == 3 && qkv.numel() > 0,
              "bertperf.", op, ": `qkv` must be a non-empty contiguous float32 CPU tensor [B, S, 3h], got ",
              qkv.scalar_type(), " ", qkv.sizes());
  TORCH_CHECK(attention_gemm_available(), "bertperf.", op,
              ": MKL's cblas_sgemm_batch is not in this torch build; use the copying attention path");
  const int64_t three_h = qkv.size(2);
  TORCH_CHECK(heads > 0 && three_h % (3 * heads) == 0, "bertperf.", op, ": the last dim of `qkv` (",
              three_h, ") must be 3 x heads x head_dim with heads = ", heads);
  return {qkv.size(0), qkv.size(1), heads, three_h / (3 * heads)};
}

void check(const Tensor& t, std::initializer_list<int64_t> shape, const char* op, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous() &&
                  t.sizes() == at::IntArrayRef(shape),
              "bertperf.", op, ": `", name, "` must be a contiguous float32 CPU tensor of shape ",
              at::IntArrayRef(shape), ", got ", t.scalar_type(), " ", t.sizes());
}

bool available() { return attention_gemm_available(); }

Tensor scores(const Tensor& qkv, int64_t heads) {
  const AttentionDims d = dims_of(qkv, heads, "attention_scores");
  Tensor out = at::empty({d.batch, d.heads, d.seq, d.seq}, qkv.options());
  attention_scores_cpu(qkv.data_ptr<float>(), out.data_ptr<float>(), d);
  return out;
}

Tensor context(const Tensor& probs, const Tensor& qkv, int64_t heads) {
  const char* op = "attention_context";
  const AttentionDims d = dims_of(qkv, heads, op);
  check(probs, {d.batch, d.heads, d.seq, d.seq}, op, "probs");
  Tensor ctx = at::empty({d.batch, d.seq, d.heads * d.head_dim}, qkv.options());
  attention_context_cpu(probs.data_ptr<float>(), qkv.data_ptr<float>(), ctx.data_ptr<float>(), d);
  return ctx;
}

std::tuple<Tensor, Tensor> context_bwd(const Tensor& dctx, const Tensor& probs, const Tensor& qkv,
                                       int64_t heads) {
  const char* op = "attention_context_bwd";
  const AttentionDims d = dims_of(qkv, heads, op);
  check(dctx, {d.batch, d.seq, d.heads * d.head_dim}, op, "dctx");
  check(probs, {d.batch, d.heads, d.seq, d.seq}, op, "probs");
  Tensor dprobs = at::empty_like(probs);
  Tensor dqkv = at::empty_like(qkv);
  attention_context_bwd_cpu(dctx.data_ptr<float>(), probs.data_ptr<float>(), qkv.data_ptr<float>(),
                            dprobs.data_ptr<float>(), dqkv.data_ptr<float>(), d);
  return {dprobs, dqkv};
}

void scores_bwd(const Tensor& dscores, const Tensor& qkv, const Tensor& dqkv, int64_t heads) {
  const char* op = "attention_scores_bwd";
  const AttentionDims d = dims_of(qkv, heads, op);
  check(dscores, {d.batch, d.heads, d.seq, d.seq}, op, "dscores");
  check(dqkv, {d.batch, d.seq, 3 * d.heads * d.head_dim}, op, "dqkv");
  attention_scores_bwd_cpu(dscores.data_ptr<float>(), qkv.data_ptr<float>(), dqkv.data_ptr<float>(), d);
}

}  // namespace
}  // namespace bind
}  // namespace bertperf

TORCH_LIBRARY_FRAGMENT(bertperf, m) {
  m.def("attention_gemm_available() -> bool", &bertperf::bind::available);
  m.def("attention_scores(Tensor qkv, int heads) -> Tensor");
  m.def("attention_context(Tensor probs, Tensor qkv, int heads) -> Tensor");
  m.def("attention_context_bwd(Tensor dctx, Tensor probs, Tensor qkv, int heads) -> (Tensor, Tensor)");
  m.def("attention_scores_bwd(Tensor dscores, Tensor qkv, Tensor(a!) dqkv, int heads) -> ()");
}

TORCH_LIBRARY_IMPL(bertperf, CPU, m) {
  m.impl("attention_scores", &bertperf::bind::scores);
  m.impl("attention_context", &bertperf::bind::context);
  m.impl("attention_context_bwd", &bertperf::bind::context_bwd);
  m.impl("attention_scores_bwd", &bertperf::bind::scores_bwd);
}
#endif
