// torch bindings for the attention softmax (see bertperf/softmax.h).
//   softmax_fwd(x, mask?, scale, p, seed) -> (y, probs?)   probs: pre-dropout, only when p > 0
//   softmax_bwd(dy, probs, scale, p, seed) -> dx
// x: [..., Sq, Sk] with at most 4 dims ([B, H, Sq, Sk]); mask: additive, broadcastable to x.
#include "common.h"

#include "bertperf/softmax.h"

namespace bertperf {
namespace bind {
namespace {

constexpr const char* kFwd = "softmax_fwd";
constexpr const char* kBwd = "softmax_bwd";

std::tuple<Tensor, OptTensor> softmax_fwd(const Tensor& x_in, const OptTensor& mask, double scale,
                                          double p, int64_t seed) {
  const int64_t cols = last_dim(x_in, kFwd);
  TORCH_CHECK(x_in.dim() <= 4, "bertperf.softmax_fwd: scores must have at most 4 dims [B, H, Sq, Sk], got ",
              x_in.sizes());
  const Tensor x = x_in.contiguous();
  const DropoutParams drop = dropout_params(p, seed, kFwd);
  std::vector<int64_t> shape4(4 - x.dim(), 1);
  for (int64_t s : x.sizes()) shape4.push_back(s);
  Tensor m;
  if (mask.has_value()) {
    TORCH_CHECK(mask->device() == x.device(), "bertperf.softmax_fwd: `mask` is on ", mask->device(),
                " but the scores are on ", x.device());
    TORCH_CHECK(mask->dim() <= 4, "bertperf.softmax_fwd: `mask` must have at most 4 dims, got ",
                mask->sizes());
    std::vector<int64_t> mshape(4 - mask->dim(), 1);
    for (int64_t s : mask->sizes()) mshape.push_back(s);
    for (int i = 0; i < 4; ++i)
      TORCH_CHECK(mshape[i] == 1 || mshape[i] == shape4[i], "bertperf.softmax_fwd: `mask` of shape ",
                  mask->sizes(), " does not broadcast to the scores' shape ", x.sizes());
    m = mask->to(acc_type(x)).reshape(mshape);
    if (m.size(3) != cols || m.stride(3) != 1) m = m.expand({mshape[0], mshape[1], mshape[2], cols}).contiguous();
    m = m.expand(shape4);
  }
  Tensor y = at::empty_like(x);
  OptTensor probs = drop.threshold ? OptTensor(at::empty_like(x)) : std::nullopt;
  SoftmaxFwdArgs a{};
  a.x = x.data_ptr();
  a.mask = m.defined() ? m.data_ptr() : nullptr;
  a.y = y.data_ptr();
  a.probs = ptr_or_null(probs);
  a.rows = x.numel() / cols;
  a.cols = cols;
  a.heads = shape4[1];
  a.q_len = shape4[2];
  if (m.defined()) {
    a.mask_sb = m.stride(0);
    a.mask_sh = m.stride(1);
    a.mask_sq = m.stride(2);
  }
  a.scale = scale;
  a.drop = drop;
  a.dtype = dtype_code(x, kFwd, "x");
  a.num_threads = num_threads();
#if defined(BERTPERF_CUDA)
  const c10::cuda::CUDAGuard guard(x.device());
  cuda_ok(bertperf_softmax_fwd_cuda(&a, stream_of(x)), kFwd);
#else
  softmax_fwd_cpu(a);
#endif
  return {y, probs};
}

Tensor softmax_bwd(const Tensor& dy_in, const Tensor& probs_in, double scale, double p, int64_t seed) {
  const int64_t cols = last_dim(probs_in, kBwd);
  const Tensor probs = probs_in.contiguous();
  const Tensor dy = like(dy_in, probs, kBwd, "dy");
  Tensor dx = at::empty_like(probs);
  SoftmaxBwdArgs a{};
  a.dy = dy.data_ptr();
  a.probs = probs.data_ptr();
  a.dx = dx.data_ptr();
  a.rows = probs.numel() / cols;
  a.cols = cols;
  a.scale = scale;
  a.drop = dropout_params(p, seed, kBwd);
  a.dtype = dtype_code(probs, kBwd, "probs");
  a.num_threads = num_threads();
#if defined(BERTPERF_CUDA)
  const c10::cuda::CUDAGuard guard(dy.device());
  cuda_ok(bertperf_softmax_bwd_cuda(&a, stream_of(dy)), kBwd);
#else
  softmax_bwd_cpu(a);
#endif
  return dx;
}

}  // namespace
}  // namespace bind
}  // namespace bertperf

#if !defined(BERTPERF_CUDA)
TORCH_LIBRARY_FRAGMENT(bertperf, m) {
  m.def("softmax_fwd(Tensor x, Tensor? mask, float scale, float p, int seed) -> (Tensor, Tensor?)");
  m.def("softmax_bwd(Tensor dy, Tensor probs, float scale, float p, int seed) -> Tensor");
}
#endif

TORCH_LIBRARY_IMPL(bertperf, BP_BINDING_DEVICE, m) {
  m.impl("softmax_fwd", &bertperf::bind::softmax_fwd);
  m.impl("softmax_bwd", &bertperf::bind::softmax_bwd);
}
