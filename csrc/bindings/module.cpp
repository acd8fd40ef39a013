// Python module shells for bertperf._C and bertperf._cuda (the latter compiled with
// -DBERTPERF_CUDA). Importing the module loads the shared library, whose static initializers
// register the ops under torch.ops.bertperf; the modules themselves are empty.
#include <Python.h>

#if !defined(BERTPERF_CUDA)
#include <torch/library.h>

#include "../cpu/cpu_common.h"

namespace {
// Selects the CPU code path (1 baseline, 3 AVX2, 4 AVX-512, 5 AVX-512 with native bf16 stores),
// clamped to what the CPU supports;
// returns the level in use. A request of 0 only queries.
int64_t cpu_isa(int64_t requested) {
  if (requested > 0) return bertperf::cpu::set_isa_level(static_cast<int>(requested));
  return bertperf::cpu::isa_level();
}
}  // namespace

TORCH_LIBRARY_FRAGMENT(bertperf, m) { m.def("cpu_isa(int requested=0) -> int", &cpu_isa); }

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
