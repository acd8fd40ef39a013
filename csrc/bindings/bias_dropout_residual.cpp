// torch bindings for bias_dropout_residual (see bertperf/bias_dropout_residual.h).
//   bias_dropout_residual_fwd(x, bias?, residual, p, seed) -> y
//   bias_dropout_residual_bwd(dy, bias?, p, seed) -> (dx, dbias?)     (dresidual is dy itself)
// p = 0 means no dropout; the seed selects the mask (same seed, same mask on every backend).
#include "common.h"

#include "bertperf/bias_dropout_residual.h"

namespace bertperf {
namespace bind {
namespace {

constexpr const char* kFwd = "bias_dropout_residual_fwd";
constexpr const char* kBwd = "bias_dropout_residual_bwd";

Tensor bdr_fwd(const Tensor& x_in, const OptTensor& bias, const Tensor& residual, double p,
               int64_t seed) {
  const int64_t cols = last_dim(x_in, kFwd);
  const Tensor x = x_in.contiguous();
  const Tensor res = like(residual, x, kFwd, "residual");
  const OptTensor b = bias.has_value() ? OptTensor(param_acc(*bias, cols, x, kFwd, "bias"))
                                       : std::nullopt;
  Tensor y = at::empty_like(x);
  BiasDropoutResidualFwdArgs a{};
  a.x = x.data_ptr();
  a.bias = ptr_or_null(b);
  a.residual = res.data_ptr();
  a.y = y.data_ptr();
  a.rows = x.numel() / cols;
  a.cols = cols;
  a.drop = dropout_params(p, seed, kFwd);
  a.dtype = dtype_code(x, kFwd, "x");
  a.num_threads = num_threads();
#if defined(BERTPERF_CUDA)
  const c10::cuda::CUDAGuard guard(x.device());
  cuda_ok(bertperf_bias_dropout_residual_fwd_cuda(&a, stream_of(x)), kFwd);
#else
  bias_dropout_residual_fwd_cpu(a);
#endif
  return y;
}

std::tuple<Tensor, OptTensor> bdr_bwd(const Tensor& dy_in, const OptTensor& bias, double p,
                                      int64_t seed) {
  const int64_t cols = last_dim(dy_in, kBwd);
  const Tensor dy = dy_in.contiguous();
  if (bias.has_value()) param_acc(*bias, cols, dy, kBwd, "bias");  // shape/device check only
  Tensor dx = at::empty_like(dy);
  OptTensor dbias = bias.has_value()
                        ? OptTensor(at::empty({cols}, dy.options().dtype(acc_type(dy))))
                        : std::nullopt;
  BiasDropoutResidualBwdArgs a{};
  a.dy = dy.data_ptr();
  a.dx = dx.data_ptr();
  a.dbias = ptr_or_null(dbias);
  a.rows = dy.numel() / cols;
  a.cols = cols;
  a.drop = dropout_params(p, seed, kBwd);
  a.dtype = dtype_code(dy, kBwd, "dy");
  a.num_threads = num_threads();
#if defined(BERTPERF_CUDA)
  const c10::cuda::CUDAGuard guard(dy.device());
  cuda_ok(bertperf_bias_dropout_residual_bwd_cuda(&a, stream_of(dy)), kBwd);
#else
  bias_dropout_residual_bwd_cpu(a);
#endif
  if (dbias.has_value()) dbias = dbias->to(bias->scalar_type());
  return {dx, dbias};
}

}  // namespace
}  // namespace bind
}  // namespace bertperf

#if !defined(BERTPERF_CUDA)
TORCH_LIBRARY_FRAGMENT(bertperf, m) {
  m.def("bias_dropout_residual_fwd(Tensor x, Tensor? bias, Tensor residual, float p, int seed) "
        "-> Tensor");
  m.def("bias_dropout_residual_bwd(Tensor dy, Tensor? bias, float p, int seed) -> (Tensor, Tensor?)");
}
#endif

TORCH_LIBRARY_IMPL(bertperf, BP_BINDING_DEVICE, m) {
  m.impl("bias_dropout_residual_fwd", &bertperf::bind::bdr_fwd);
  m.impl("bias_dropout_residual_bwd", &bertperf::bind::bdr_bwd);
}
