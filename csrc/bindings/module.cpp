// Python module shells for bertperf._C and bertperf._cuda (the latter compiled with
// -DBERTPERF_CUDA). Importing the module loads the shared library, whose static initializers
// register the ops under torch.ops.bertperf; the modules themselves are empty.
#include <Python.h>

#if !defined(BERTPERF_CUDA)
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <string>

#include "../cpu/cpu_common.h"
#include "bertperf/bias_gelu.h"

namespace {
// Selects the CPU code path (1 baseline, 3 AVX2, 4 AVX-512, 5 AVX-512 with native bf16 stores),
// clamped to what the CPU supports;
// returns the level in use. A request of 0 only queries.
int64_t cpu_isa(int64_t requested) {
  if (requested > 0) return bertperf::cpu::set_isa_level(static_cast<int>(requested));
  return bertperf::cpu::isa_level();
}

// Test hook for the shared fp32 math of bertperf/common.h: y[i] = f(x[i]) for f in exp,
// exp_nonpositive, erf, tanh, gelu_erf, gelu_erf_grad, through the same multiversioned, vectorized
// loops as the kernels (tests/ops/test_fast_math.py compares them with float64 over the float
// range). Not a kernel: CPU and fp32 only.
template <int kFn>
inline __attribute__((always_inline)) void math_loop(const float* x, float* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    if constexpr (kFn == 0) y[i] = bertperf::fast_exp(v);
    if constexpr (kFn == 1) y[i] = bertperf::fast_exp_nonpositive(v);
    if constexpr (kFn == 2) y[i] = bertperf::fast_erf(v);
    if constexpr (kFn == 3) y[i] = bertperf::gelu_erf(v);
    if constexpr (kFn == 4) y[i] = bertperf::gelu_erf_grad(v);
    if constexpr (kFn == 5) y[i] = bertperf::fast_tanh(v);
  }
}
BP_CPU_MULTIVERSION(math_exp, math_loop<0>)
BP_CPU_MULTIVERSION(math_exp_np, math_loop<1>)
BP_CPU_MULTIVERSION(math_erf, math_loop<2>)
BP_CPU_MULTIVERSION(math_gelu, math_loop<3>)
BP_CPU_MULTIVERSION(math_gelu_grad, math_loop<4>)
BP_CPU_MULTIVERSION(math_tanh, math_loop<5>)

at::Tensor fast_math_eval(const at::Tensor& x, std::string fn) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.is_contiguous(),
              "bertperf.fast_math_eval: x must be a contiguous fp32 CPU tensor");
  at::Tensor y = at::empty_like(x);
  const float* xp = x.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const int64_t n = x.numel();
  if (fn == "exp") math_exp(xp, yp, n);
  else if (fn == "exp_nonpositive") math_exp_np(xp, yp, n);
  else if (fn == "erf") math_erf(xp, yp, n);
  else if (fn == "gelu_erf") math_gelu(xp, yp, n);
  else if (fn == "gelu_erf_grad") math_gelu_grad(xp, yp, n);
  else if (fn == "tanh") math_tanh(xp, yp, n);
  else TORCH_CHECK(false, "bertperf.fast_math_eval: unknown function '", fn, "'");
  return y;
}
}  // namespace

TORCH_LIBRARY_FRAGMENT(bertperf, m) {
  m.def("cpu_isa(int requested=0) -> int", &cpu_isa);
  m.def("fast_math_eval(Tensor x, str fn) -> Tensor", &fast_math_eval);
}

extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef def = {PyModuleDef_HEAD_INIT, "bertperf._C",
                            "bertperf CPU kernels (ops registered under torch.ops.bertperf)", -1,
                            nullptr};
  return PyModule_Create(&def);
}
#else
extern "C" PyMODINIT_FUNC PyInit__cuda(void) {
  static PyModuleDef def = {PyModuleDef_HEAD_INIT, "bertperf._cuda",
                            "bertperf CUDA kernels (ops registered under torch.ops.bertperf)", -1,
                            nullptr};
  return PyModule_Create(&def);
}
#endif
