// torch bindings for bias_gelu (see bertperf/bias_gelu.h).
//   bias_gelu_fwd(x, bias?, approximate) -> y
//   bias_gelu_bwd(dy, x, bias?, approximate) -> (dx, dbias?)      approximate: "none" | "tanh"
#include "common.h"

#include "bertperf/bias_gelu.h"

namespace bertperf {
namespace bind {
namespace {

constexpr const char* kFwd = "bias_gelu_fwd";
constexpr const char* kBwd = "bias_gelu_bwd";

int32_t approx_code(c10::string_view approximate, const char* op) {
  TORCH_CHECK(approximate == "none" || approximate == "tanh", "bertperf.", op,
              ": approximate must be 'none' (erf) or 'tanh', got '", std::string(approximate), "'");
  return approximate == "tanh" ? kGeluTanh : kGeluErf;
}

Tensor bias_gelu_fwd(const Tensor& x_in, const OptTensor& bias, c10::string_view approximate) {
  const int64_t cols = last_dim(x_in, kFwd);
  const Tensor x = x_in.contiguous();
  const OptTensor b = bias.has_value() ? OptTensor(param_acc(*bias, cols, x, kFwd, "bias"))
                                       : std::nullopt;
  Tensor y = at::empty_like(x);
  BiasGeluFwdArgs a{};
  a.x = x.data_ptr();
  a.bias = ptr_or_null(b);
  a.y = y.data_ptr();
  a.rows = x.numel() / cols;
  a.cols = cols;
  a.approx = approx_code(approximate, kFwd);
  a.dtype = dtype_code(x, kFwd, "x");
  a.num_threads = num_threads();
#if defined(BERTPERF_CUDA)
  const c10::cuda::CUDAGuard guard(x.device());
  cuda_ok(bertperf_bias_gelu_fwd_cuda(&a, stream_of(x)), kFwd);
#else
  bias_gelu_fwd_cpu(a);
#endif
  return y;
}

std::tuple<Tensor, OptTensor> bias_gelu_bwd(const Tensor& dy_in, const Tensor& x_in,
                                            const OptTensor& bias, c10::string_view approximate) {
  const int64_t cols = last_dim(x_in, kBwd);
  const Tensor x = x_in.contiguous();
  const Tensor dy = like(dy_in, x, kBwd, "dy");
  const OptTensor b = bias.has_value() ? OptTensor(param_acc(*bias, cols, x, kBwd, "bias"))
                                       : std::nullopt;
  Tensor dx = at::empty_like(x);
  OptTensor dbias = b.has_value() ? OptTensor(at::empty({cols}, x.options().dtype(acc_type(x))))
                                  : std::nullopt;
  BiasGeluBwdArgs a{};
  a.dy = dy.data_ptr();
  a.x = x.data_ptr();
  a.bias = ptr_or_null(b);
  a.dx = dx.data_ptr();
  a.dbias = ptr_or_null(dbias);
  a.rows = x.numel() / cols;
  a.cols = cols;
  a.approx = approx_code(approximate, kBwd);
  a.dtype = dtype_code(x, kBwd, "x");
  a.num_threads = num_threads();
#if defined(BERTPERF_CUDA)
  const c10::cuda::CUDAGuard guard(x.device());
  cuda_ok(bertperf_bias_gelu_bwd_cuda(&a, stream_of(x)), kBwd);
#else
  bias_gelu_bwd_cpu(a);
#endif
  if (dbias.has_value()) dbias = dbias->to(bias->scalar_type());
  return {dx, dbias};
}

}  // namespace
}  // namespace bind
}  // namespace bertperf

#if !defined(BERTPERF_CUDA)
TORCH_LIBRARY_FRAGMENT(bertperf, m) {
  m.def("bias_gelu_fwd(Tensor x, Tensor? bias, str approximate) -> Tensor");
  m.def("bias_gelu_bwd(Tensor dy, Tensor x, Tensor? bias, str approximate) -> (Tensor, Tensor?)");
}
#endif

TORCH_LIBRARY_IMPL(bertperf, BP_BINDING_DEVICE, m) {
  m.impl("bias_gelu_fwd", &bertperf::bind::bias_gelu_fwd);
  m.impl("bias_gelu_bwd", &bertperf::bind::bias_gelu_bwd);
}
