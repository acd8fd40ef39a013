// torch bindings for the fused cross-entropy (see bertperf/cross_entropy.h).
//   cross_entropy_fwd(x [M,V], bias? [V], labels [M] int64, scale)
//       -> (y? [M,V], grad [M,V], loss [M], correct [M] uint8, dbias? [V])
// y (the biased logits) and dbias only with a bias. x and grad: fp32 or bf16 (fp64 on the CPU);
// loss and dbias in the math type; labels must lie in [0, V).
#include "common.h"

#include <ATen/ops/aminmax.h>

#include "bertperf/cross_entropy.h"

namespace bertperf {
namespace bind {
namespace {

constexpr const char* kFwd = "cross_entropy_fwd";

std::tuple<OptTensor, Tensor, Tensor, Tensor, OptTensor> cross_entropy_fwd(
    const Tensor& x_in, const OptTensor& bias_in, const Tensor& labels_in, double scale) {
  TORCH_CHECK(x_in.dim() == 2 && x_in.numel() > 0, "bertperf.", kFwd,
              ": logits must be a non-empty [rows, classes] tensor, got shape ", x_in.sizes());
  const Tensor x = x_in.contiguous();
  const int64_t rows = x.size(0), cols = x.size(1);
  TORCH_CHECK(labels_in.dim() == 1 && labels_in.size(0) == rows &&
                  (labels_in.scalar_type() == at::kLong || labels_in.scalar_type() == at::kInt),
              "bertperf.", kFwd, ": labels must be int64 [", rows, "], got ", labels_in.scalar_type(), " ",
              labels_in.sizes());
  TORCH_CHECK(labels_in.device() == x.device(), "bertperf.", kFwd, ": labels are on ", labels_in.device(),
              " but the logits are on ", x.device());
  const Tensor labels = labels_in.to(at::kLong).contiguous();
  const auto [lo, hi] = at::aminmax(labels);
  TORCH_CHECK(lo.item<int64_t>() >= 0 && hi.item<int64_t>() < cols, "bertperf.", kFwd,
              ": every label must be a class index in [0, ", cols, "), got labels in [", lo.item<int64_t>(),
              ", ", hi.item<int64_t>(), "]");
  OptTensor bias, y, dbias;
  if (bias_in.has_value()) {
    bias = param_acc(*bias_in, cols, x, kFwd, "bias");
    y = at::empty_like(x);
    dbias = at::empty({cols}, x.options().dtype(acc_type(x)));
  }
  Tensor grad = at::empty_like(x);
  Tensor loss = at::empty({rows}, x.options().dtype(acc_type(x)));
  Tensor correct = at::empty({rows}, x.options().dtype(at::kByte));
  CrossEntropyFwdArgs a{};
  a.x = x.data_ptr();
  a.bias = ptr_or_null(bias);
  a.labels = labels.data_ptr<int64_t>();
  a.y = ptr_or_null(y);
  a.grad = grad.data_ptr();
  a.loss = loss.data_ptr();
  a.correct = correct.data_ptr<uint8_t>();
  a.dbias = ptr_or_null(dbias);
  a.rows = rows;
  a.cols = cols;
  a.scale = scale;
  a.dtype = dtype_code(x, kFwd, "logits");
  a.num_threads = num_threads();
#if defined(BERTPERF_CUDA)
  const c10::cuda::CUDAGuard guard(x.device());
  cuda_ok(bertperf_cross_entropy_fwd_cuda(&a, stream_of(x)), kFwd);
#else
  cross_entropy_fwd_cpu(a);
#endif
  return {y, grad, loss, correct, dbias};
}

}  // namespace
}  // namespace bind
}  // namespace bertperf

#if !defined(BERTPERF_CUDA)
TORCH_LIBRARY_FRAGMENT(bertperf, m) {
  m.def("cross_entropy_fwd(Tensor x, Tensor? bias, Tensor labels, float scale) -> "
        "(Tensor?, Tensor, Tensor, Tensor, Tensor?)");
}
#endif

TORCH_LIBRARY_IMPL(bertperf, BP_BINDING_DEVICE, m) {
  m.impl("cross_entropy_fwd", &bertperf::bind::cross_entropy_fwd);
}
