// torch bindings for layer_norm (see bertperf/layer_norm.h for the math and shapes).
//   layer_norm_fwd(x, bias?, residual?, gamma, beta, eps) -> (y, mean, rstd)
//   layer_norm_bwd(dy, x, bias?, residual?, gamma, mean, rstd, y?, beta?)
//     -> (dx, dgamma, dbeta, dbias?)
// y and beta (the forward's output and beta, both or neither) let the CPU backward take xhat from
// y instead of recomputing x + bias + residual (see bertperf/layer_norm.h); results agree either way.
// Statistics are in the math type (fp32; fp64 for fp64 input). dgamma/dbeta come back in gamma's
// dtype and dbias in bias's; dx doubles as dresidual.
#include "common.h"

#include "bertperf/layer_norm.h"

namespace bertperf {
namespace bind {
namespace {

constexpr const char* kFwd = "layer_norm_fwd";
constexpr const char* kBwd = "layer_norm_bwd";

std::tuple<Tensor, Tensor, Tensor> layer_norm_fwd(const Tensor& x_in, const OptTensor& bias,
                                                   const OptTensor& residual, const Tensor& gamma,
                                                   const Tensor& beta, double eps) {
  const int64_t cols = last_dim(x_in, kFwd);
  const Tensor x = x_in.contiguous();
  const int64_t rows = x.numel() / cols;
  const int32_t dtype = dtype_code(x, kFwd, "x");
  const Tensor res = residual.has_value() ? like(*residual, x, kFwd, "residual") : Tensor();
  const OptTensor b = bias.has_value() ? OptTensor(param_acc(*bias, cols, x, kFwd, "bias"))
                                       : std::nullopt;
  const Tensor g = param_acc(gamma, cols, x, kFwd, "gamma");
  const Tensor be = param_acc(beta, cols, x, kFwd, "beta");
  TORCH_CHECK(eps > 0.0, "bertperf.layer_norm_fwd: eps must be positive, got ", eps);

  Tensor y = at::empty_like(x);
  auto stats_shape = x.sizes().vec();
  stats_shape.pop_back();
  Tensor mean = at::empty(stats_shape, x.options().dtype(acc_type(x)));
  Tensor rstd = at::empty(stats_shape, x.options().dtype(acc_type(x)));

  LayerNormFwdArgs a{};
  a.x = x.data_ptr();
  a.residual = res.defined() ? res.data_ptr() : nullptr;
  a.bias = ptr_or_null(b);
  a.gamma = g.data_ptr();
  a.beta = be.data_ptr();
  a.y = y.data_ptr();
  a.mean = mean.data_ptr();
  a.rstd = rstd.data_ptr();
  a.rows = rows;
  a.cols = cols;
  a.eps = eps;
  a.dtype = dtype;
  a.num_threads = num_threads();
#if defined(BERTPERF_CUDA)
  const c10::cuda::CUDAGuard guard(x.device());
  cuda_ok(bertperf_layer_norm_fwd_cuda(&a, stream_of(x)), kFwd);
#else
  layer_norm_fwd_cpu(a);
#endif
  return {y, mean, rstd};
}

std::tuple<Tensor, Tensor, Tensor, OptTensor> layer_norm_bwd(
    const Tensor& dy_in, const Tensor& x_in, const OptTensor& bias, const OptTensor& residual,
    const Tensor& gamma, const Tensor& mean_in, const Tensor& rstd_in, const OptTensor& y_in,
    const OptTensor& beta_in) {
  const int64_t cols = last_dim(x_in, kBwd);
  const Tensor x = x_in.contiguous();
  const int64_t rows = x.numel() / cols;
  const int32_t dtype = dtype_code(x, kBwd, "x");
  const Tensor dy = like(dy_in, x, kBwd, "dy");
  const Tensor res = residual.has_value() ? like(*residual, x, kBwd, "residual") : Tensor();
  const OptTensor b = bias.has_value() ? OptTensor(param_acc(*bias, cols, x, kBwd, "bias"))
                                       : std::nullopt;
  const Tensor g = param_acc(gamma, cols, x, kBwd, "gamma");
  TORCH_CHECK(mean_in.numel() == rows && rstd_in.numel() == rows &&
                  mean_in.scalar_type() == acc_type(x) && rstd_in.scalar_type() == acc_type(x),
              "bertperf.layer_norm_bwd: mean and rstd must be the [", rows,
              "] statistics returned by layer_norm_fwd for this input");
  const Tensor mean = mean_in.contiguous();
  const Tensor rstd = rstd_in.contiguous();
  TORCH_CHECK(y_in.has_value() == beta_in.has_value(),
              "bertperf.layer_norm_bwd: pass both `y` and `beta` (the forward's output and beta) "
              "or neither");
  const Tensor y = y_in.has_value() ? like(*y_in, x, kBwd, "y") : Tensor();
  const Tensor be = beta_in.has_value() ? param_acc(*beta_in, cols, x, kBwd, "beta") : Tensor();

  Tensor dx = at::empty_like(x);
  const auto f32 = x.options().dtype(acc_type(x));
  Tensor dgamma = at::empty({cols}, f32);
  Tensor dbeta = at::empty({cols}, f32);
  OptTensor dbias = b.has_value() ? OptTensor(at::empty({cols}, f32)) : std::nullopt;

  LayerNormBwdArgs a{};
  a.dy = dy.data_ptr();
  a.x = x.data_ptr();
  a.residual = res.defined() ? res.data_ptr() : nullptr;
  a.bias = ptr_or_null(b);
  a.gamma = g.data_ptr();
  a.mean = mean.data_ptr();
  a.rstd = rstd.data_ptr();
  a.dx = dx.data_ptr();
  a.dgamma = dgamma.data_ptr();
  a.dbeta = dbeta.data_ptr();
  a.dbias = ptr_or_null(dbias);
  a.y = y.defined() ? y.data_ptr() : nullptr;
  a.beta = be.defined() ? be.data_ptr() : nullptr;
  a.rows = rows;
  a.cols = cols;
  a.dtype = dtype;
  a.num_threads = num_threads();
#if defined(BERTPERF_CUDA)
  const c10::cuda::CUDAGuard guard(x.device());
  Tensor ws = at::empty({bertperf_layer_norm_bwd_workspace_floats(rows, cols)},
                        x.options().dtype(at::kFloat));
  a.workspace = ws.data_ptr<float>();
  cuda_ok(bertperf_layer_norm_bwd_cuda(&a, stream_of(x)), kBwd);
#else
  layer_norm_bwd_cpu(a);
#endif
  if (dbias.has_value()) dbias = dbias->to(bias->scalar_type());
  return {dx, dgamma.to(gamma.scalar_type()), dbeta.to(gamma.scalar_type()), dbias};
}

}  // namespace
}  // namespace bind
}  // namespace bertperf

#if !defined(BERTPERF_CUDA)
TORCH_LIBRARY_FRAGMENT(bertperf, m) {
  m.def("layer_norm_fwd(Tensor x, Tensor? bias, Tensor? residual, Tensor gamma, Tensor beta, "
        "float eps) -> (Tensor, Tensor, Tensor)");
  m.def("layer_norm_bwd(Tensor dy, Tensor x, Tensor? bias, Tensor? residual, Tensor gamma, "
        "Tensor mean, Tensor rstd, Tensor? y=None, Tensor? beta=None) -> (Tensor, Tensor, Tensor, "
        "Tensor?)");
}
#endif

TORCH_LIBRARY_IMPL(bertperf, BP_BINDING_DEVICE, m) {
  m.impl("layer_norm_fwd", &bertperf::bind::layer_norm_fwd);
  m.impl("layer_norm_bwd", &bertperf::bind::layer_norm_bwd);
}
