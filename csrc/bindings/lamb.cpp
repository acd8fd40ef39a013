// torch bindings for lamb (see bertperf/lamb.h for the math and bertperf/optim/lamb.py for use).
//   lamb_sq_norms(xs) -> float64 [n]: sum of squares of each tensor (fp32 or bf16)
//   lamb_update_moments(masters, grads, exp_avgs, exp_avg_sqs, scalars...) -> float64 [n, 2]
//   lamb_apply_update(masters, exp_avgs, exp_avg_sqs, params, step_sizes, scalars...) -> ()
//   lamb_step(masters, grads, exp_avgs, exp_avg_sqs, params, scalars..., lr, adapt) -> ()
// masters, exp_avgs, exp_avg_sqs: fp32; grads: all fp32 or all bf16; params: empty, or one bf16
// tensor per master (rewritten from it). Every tensor contiguous, on one device, and the i-th
// tensors of all lists have the same number of elements. The lists are updated in place.
#include <ATen/ops/from_blob.h>

#include <vector>

#include "common.h"

#include "bertperf/lamb.h"

namespace bertperf {
namespace bind {
namespace {

using TensorList = c10::ArrayRef<Tensor>;

// The pointer table of a tensor list as one int64 tensor (on the tensors' device):
// [master | grad | exp_avg | exp_avg_sq | param | numel] (n each) then chunk_start (n + 1).
struct Table {
  Tensor data;
  int64_t n = 0, chunks = 0, elems = 0;
  LambTensors view() const {
    const int64_t* base = data.data_ptr<int64_t>();
    const int64_t n5 = 5 * n;
    LambTensors t{};
    t.n = n;
    t.master = reinterpret_cast<void* const*>(base);
    t.grad = reinterpret_cast<const void* const*>(base + n);
    t.exp_avg = reinterpret_cast<void* const*>(base + 2 * n);
    t.exp_avg_sq = reinterpret_cast<void* const*>(base + 3 * n);
    t.param = reinterpret_cast<void* const*>(base + 4 * n);
    t.numel = base + n5;
    t.chunk_start = base + n5 + n;
    t.chunks = chunks;
    return t;
  }
};

void check(const TensorList& xs, int64_t n, const Tensor& ref, at::ScalarType dtype, const char* op,
           const char* name) {
  TORCH_CHECK(static_cast<int64_t>(xs.size()) == n, "bertperf.", op, ": `", name, "` has ",
              xs.size(), " tensors, expected ", n);
  for (int64_t i = 0; i < n; ++i) {
    const Tensor& x = xs[i];
    TORCH_CHECK(x.scalar_type() == dtype, "bertperf.", op, ": `", name, "[", i, "]` has dtype ",
                x.scalar_type(), ", expected ", dtype);
    TORCH_CHECK(x.device() == ref.device(), "bertperf.", op, ": `", name, "[", i, "]` is on ",
                x.device(), " but the first tensor is on ", ref.device());
    TORCH_CHECK(x.is_contiguous(), "bertperf.", op, ": `", name, "[", i, "]` must be contiguous");
  }
}

void check_numel(const TensorList& xs, const TensorList& ref, const char* op, const char* name) {
  for (size_t i = 0; i < xs.size(); ++i)
    TORCH_CHECK(xs[i].numel() == ref[i].numel(), "bertperf.", op, ": `", name, "[", i, "]` has ",
                xs[i].numel(), " elements but masters[", i, "] has ", ref[i].numel());
}

int64_t as_int(const void* p) { return reinterpret_cast<int64_t>(p); }

// Builds the table; grads and params may be empty lists (their pointers are then null).
Table make_table(const TensorList& masters, const TensorList& grads, const TensorList& exp_avgs,
                 const TensorList& exp_avg_sqs, const TensorList& params) {
  Table t;
  t.n = static_cast<int64_t>(masters.size());
  std::vector<int64_t> host(static_cast<size_t>(7 * t.n + 1), 0);
  const int64_t n = t.n;
  for (int64_t i = 0; i < n; ++i) {
    host[i] = as_int(masters[i].data_ptr());
    host[n + i] = grads.empty() ? 0 : as_int(grads[i].data_ptr());
    host[2 * n + i] = exp_avgs.empty() ? 0 : as_int(exp_avgs[i].data_ptr());
    host[3 * n + i] = exp_avg_sqs.empty() ? 0 : as_int(exp_avg_sqs[i].data_ptr());
    host[4 * n + i] = params.empty() ? 0 : as_int(params[i].data_ptr());
    host[5 * n + i] = masters[i].numel();
    host[6 * n + i + 1] = host[6 * n + i] + lamb_chunks(masters[i].numel());
    t.elems += masters[i].numel();
  }
  t.chunks = host[7 * n];
  Tensor cpu = at::empty({7 * n + 1}, at::TensorOptions().dtype(at::kLong));
  std::copy(host.begin(), host.end(), cpu.data_ptr<int64_t>());
  t.data = masters[0].device().is_cpu() ? cpu : cpu.to(at::TensorOptions().device(masters[0].device()));
  return t;
}

int32_t list_dtype(const TensorList& xs, const char* op, const char* name) {
  TORCH_CHECK(!xs.empty(), "bertperf.", op, ": `", name, "` is empty");
  const at::ScalarType d = xs[0].scalar_type();
  TORCH_CHECK(d == at::kFloat || d == at::kBFloat16, "bertperf.", op, ": `", name,
              "` must be float32 or bfloat16 tensors, got ", d);
  return d == at::kFloat ? kFloat32 : kBFloat16;
}

void check_state(const TensorList& masters, const TensorList& exp_avgs,
                 const TensorList& exp_avg_sqs, const TensorList& params, const char* op) {
  TORCH_CHECK(!masters.empty(), "bertperf.", op, ": `masters` is empty");
  const int64_t n = static_cast<int64_t>(masters.size());
  const Tensor& ref = masters[0];
  check(masters, n, ref, at::kFloat, op, "masters");
  check(exp_avgs, n, ref, at::kFloat, op, "exp_avgs");
  check(exp_avg_sqs, n, ref, at::kFloat, op, "exp_avg_sqs");
  check_numel(exp_avgs, masters, op, "exp_avgs");
  check_numel(exp_avg_sqs, masters, op, "exp_avg_sqs");
  if (!params.empty()) {
    check(params, n, ref, at::kBFloat16, op, "params");
    check_numel(params, masters, op, "params");
  }
}

int32_t check_grads(const TensorList& grads, const TensorList& masters, const char* op) {
  const int32_t dtype = list_dtype(grads, op, "grads");
  check(grads, static_cast<int64_t>(masters.size()), masters[0],
        dtype == kFloat32 ? at::kFloat : at::kBFloat16, op, "grads");
  check_numel(grads, masters, op, "grads");
  return dtype;
}

LambScalars scalars(double beta1, double beta2, double clip, double inv_bc1, double inv_bc2,
                    double eps, double weight_decay, double lr, bool adapt) {
  LambScalars s{};
  s.beta1 = static_cast<float>(beta1);
  s.beta2 = static_cast<float>(beta2);
  s.one_minus_beta1 = static_cast<float>(1.0 - beta1);
  s.one_minus_beta2 = static_cast<float>(1.0 - beta2);
  s.clip = static_cast<float>(clip);
  s.inv_bc1 = static_cast<float>(inv_bc1);
  s.inv_bc2 = static_cast<float>(inv_bc2);
  s.eps = static_cast<float>(eps);
  s.weight_decay = static_cast<float>(weight_decay);
  s.lr = lr;
  s.adapt = adapt ? 1 : 0;
  return s;
}

#if defined(BERTPERF_CUDA)
Tensor workspace(const Table& t) {
  return at::empty({bertperf_lamb_workspace_doubles(t.n, t.chunks)},
                   t.data.options().dtype(at::kDouble));
}
#endif

Tensor lamb_sq_norms(TensorList xs) {
  constexpr const char* op = "lamb_sq_norms";
  const int32_t dtype = list_dtype(xs, op, "xs");
  check(xs, static_cast<int64_t>(xs.size()), xs[0], dtype == kFloat32 ? at::kFloat : at::kBFloat16,
        op, "xs");
  const Table table = make_table(xs, {}, {}, {}, {});
  const LambTensors t = table.view();
  Tensor out = at::empty({table.n}, xs[0].options().dtype(at::kDouble));
  LambSqNormArgs a{};
  a.x = t.master;
  a.numel = t.numel;
  a.chunk_start = t.chunk_start;
  a.n = t.n;
  a.chunks = t.chunks;
  a.dtype = dtype;
  a.out = out.data_ptr<double>();
  a.num_threads = num_threads();
#if defined(BERTPERF_CUDA)
  const c10::cuda::CUDAGuard guard(xs[0].device());
  Tensor ws = workspace(table);
  a.workspace = ws.data_ptr<double>();
  cuda_ok(bertperf_lamb_sq_norms_cuda(&a, stream_of(xs[0])), op);
#else
  lamb_sq_norms_cpu(a);
#endif
  return out;
}

Tensor lamb_update_moments(TensorList masters, TensorList grads, TensorList exp_avgs,
                           TensorList exp_avg_sqs, double beta1, double beta2, double clip,
                           double inv_bc1, double inv_bc2, double eps, double weight_decay) {
  constexpr const char* op = "lamb_update_moments";
  check_state(masters, exp_avgs, exp_avg_sqs, {}, op);
  const int32_t gdtype = check_grads(grads, masters, op);
  const Table table = make_table(masters, grads, exp_avgs, exp_avg_sqs, {});
  LambArgs a{};
  a.t = table.view();
  a.t.grad_dtype = gdtype;
  a.s = scalars(beta1, beta2, clip, inv_bc1, inv_bc2, eps, weight_decay, 0.0, false);
  Tensor out = at::empty({table.n, 2}, masters[0].options().dtype(at::kDouble));
  a.sq_norms = out.data_ptr<double>();
  a.num_threads = num_threads();
#if defined(BERTPERF_CUDA)
  const c10::cuda::CUDAGuard guard(masters[0].device());
  Tensor ws = workspace(table);
  a.workspace = ws.data_ptr<double>();
  cuda_ok(bertperf_lamb_update_moments_cuda(&a, stream_of(masters[0])), op);
#else
  lamb_update_moments_cpu(a);
#endif
  return out;
}

void lamb_apply_update(TensorList masters, TensorList exp_avgs, TensorList exp_avg_sqs,
                       TensorList params, const Tensor& step_sizes_in, double inv_bc1,
                       double inv_bc2, double eps, double weight_decay) {
  constexpr const char* op = "lamb_apply_update";
  check_state(masters, exp_avgs, exp_avg_sqs, params, op);
  TORCH_CHECK(step_sizes_in.numel() == static_cast<int64_t>(masters.size()), "bertperf.", op,
              ": `step_sizes` must have one value per tensor (", masters.size(), "), got ",
              step_sizes_in.numel());
  const Tensor step_sizes =
      step_sizes_in.to(masters[0].device(), at::kDouble).contiguous();
  const Table table = make_table(masters, {}, exp_avgs, exp_avg_sqs, params);
  LambArgs a{};
  a.t = table.view();
  a.t.grad_dtype = kFloat32;
  a.s = scalars(0.0, 0.0, 1.0, inv_bc1, inv_bc2, eps, weight_decay, 0.0, false);
  a.step_sizes = step_sizes.data_ptr<double>();
  a.num_threads = num_threads();
#if defined(BERTPERF_CUDA)
  const c10::cuda::CUDAGuard guard(masters[0].device());
  cuda_ok(bertperf_lamb_apply_update_cuda(&a, stream_of(masters[0])), op);
#else
  lamb_apply_update_cpu(a);
#endif
}

void lamb_step(TensorList masters, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs,
               TensorList params, double beta1, double beta2, double clip, double inv_bc1,
               double inv_bc2, double eps, double weight_decay, double lr, bool adapt) {
  constexpr const char* op = "lamb_step";
  check_state(masters, exp_avgs, exp_avg_sqs, params, op);
  const int32_t gdtype = check_grads(grads, masters, op);
  const Table table = make_table(masters, grads, exp_avgs, exp_avg_sqs, params);
  LambArgs a{};
  a.t = table.view();
  a.t.grad_dtype = gdtype;
  a.s = scalars(beta1, beta2, clip, inv_bc1, inv_bc2, eps, weight_decay, lr, adapt);
  a.num_threads = num_threads();
#if defined(BERTPERF_CUDA)
  const c10::cuda::CUDAGuard guard(masters[0].device());
  Tensor ws = workspace(table);
  a.workspace = ws.data_ptr<double>();
  cuda_ok(bertperf_lamb_step_cuda(&a, stream_of(masters[0])), op);
#else
  lamb_step_cpu(a);
#endif
}

}  // namespace
}  // namespace bind
}  // namespace bertperf

#if !defined(BERTPERF_CUDA)
TORCH_LIBRARY_FRAGMENT(bertperf, m) {
  m.def("lamb_sq_norms(Tensor[] xs) -> Tensor");
  m.def("lamb_update_moments(Tensor(a!)[] masters, Tensor[] grads, Tensor(b!)[] exp_avgs, "
        "Tensor(c!)[] exp_avg_sqs, float beta1, float beta2, float clip, float inv_bc1, "
        "float inv_bc2, float eps, float weight_decay) -> Tensor");
  m.def("lamb_apply_update(Tensor(a!)[] masters, Tensor[] exp_avgs, Tensor[] exp_avg_sqs, "
        "Tensor(d!)[] params, Tensor step_sizes, float inv_bc1, float inv_bc2, float eps, "
        "float weight_decay) -> ()");
  m.def("lamb_step(Tensor(a!)[] masters, Tensor[] grads, Tensor(b!)[] exp_avgs, "
        "Tensor(c!)[] exp_avg_sqs, Tensor(d!)[] params, float beta1, float beta2, float clip, "
        "float inv_bc1, float inv_bc2, float eps, float weight_decay, float lr, bool adapt) -> ()");
}
#endif

TORCH_LIBRARY_IMPL(bertperf, BP_BINDING_DEVICE, m) {
  m.impl("lamb_sq_norms", &bertperf::bind::lamb_sq_norms);
  m.impl("lamb_update_moments", &bertperf::bind::lamb_update_moments);
  m.impl("lamb_apply_update", &bertperf::bind::lamb_apply_update);
  m.impl("lamb_step", &bertperf::bind::lamb_step);
}
