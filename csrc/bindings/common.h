// Shared helpers for the thin torch bindings in csrc/bindings/<op>.cpp.
//
// Each binding file is compiled twice: into bertperf._C (CPU build: defines the op schemas with
// TORCH_LIBRARY_FRAGMENT and registers the CPU kernels) and, with -DBERTPERF_CUDA, into
// bertperf._cuda (registers the CUDA kernels for the same schemas). Only light ATen headers are
// included (no torch/extension.h, no pybind11): a binding TU compiles in ~7 s instead of ~30 s.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Optional.h>
#include <torch/library.h>

#include <optional>
#include <string>

#include "bertperf/common.h"

#if defined(BERTPERF_CUDA)
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#define BP_BINDING_DEVICE CUDA
#else
#define BP_BINDING_DEVICE CPU
#endif

namespace bertperf {
namespace bind {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

// DType code of an activation tensor: fp32 or bf16 (and fp64 on the CPU, for gradcheck).
inline int32_t dtype_code(const Tensor& t, const char* op, const char* name) {
#if defined(BERTPERF_CUDA)
  const bool ok = t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16;
  const char* allowed = "float32 or bfloat16";
#else
  const bool ok = t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16 ||
                  t.scalar_type() == at::kDouble;
  const char* allowed = "float32, bfloat16 or float64";
#endif
  TORCH_CHECK(ok, "bertperf.", op, ": `", name, "` must be ", allowed, ", got ", t.scalar_type());
  return t.scalar_type() == at::kFloat ? kFloat32
         : t.scalar_type() == at::kBFloat16 ? kBFloat16
                                            : kFloat64;
}

// The math type of an activation: float64 for float64 data, else float32.
inline at::ScalarType acc_type(const Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// Checks that `t` matches `ref` in device, dtype and shape; returns it contiguous.
inline Tensor like(const Tensor& t, const Tensor& ref, const char* op, const char* name) {
  TORCH_CHECK(t.device() == ref.device(), "bertperf.", op, ": `", name, "` is on ", t.device(),
              " but the input is on ", ref.device());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), "bertperf.", op, ": `", name, "` has dtype ",
              t.scalar_type(), " but the input has ", ref.scalar_type(), "; cast it first");
  TORCH_CHECK(t.sizes() == ref.sizes(), "bertperf.", op, ": `", name, "` has shape ", t.sizes(),
              " but the input has shape ", ref.sizes());
  return t.contiguous();
}

// A per-feature parameter ([cols], any float dtype) as a contiguous tensor of the input's math
// type (acc_type) on the input's device.
inline Tensor param_acc(const Tensor& p, int64_t cols, const Tensor& ref, const char* op,
                        const char* name) {
  TORCH_CHECK(p.dim() == 1 && p.size(0) == cols, "bertperf.", op, ": `", name,
              "` must have shape [", cols, "] (the last dimension of the input), got ", p.sizes());
  TORCH_CHECK(p.device() == ref.device(), "bertperf.", op, ": `", name, "` is on ", p.device(),
              " but the input is on ", ref.device());
  return p.to(acc_type(ref)).contiguous();
}

inline const void* ptr_or_null(const std::optional<Tensor>& t) {
  return t.has_value() ? t->data_ptr() : nullptr;
}

inline void* ptr_or_null(std::optional<Tensor>& t) { return t.has_value() ? t->data_ptr() : nullptr; }

inline int64_t last_dim(const Tensor& x, const char* op) {
  TORCH_CHECK(x.dim() >= 1 && x.numel() > 0, "bertperf.", op,
              ": the input must be a non-empty tensor, got shape ", x.sizes());
  return x.size(-1);
}

inline DropoutParams dropout_params(double p, int64_t seed, const char* op) {
  TORCH_CHECK(p >= 0.0 && p < 1.0, "bertperf.", op, ": dropout probability must be in [0, 1), got ",
              p);
  return make_dropout_params(p, static_cast<uint64_t>(seed));
}

inline int num_threads() { return at::get_num_threads(); }

#if defined(BERTPERF_CUDA)
inline void* stream_of(const Tensor& t) {
  return static_cast<void*>(at::cuda::getCurrentCUDAStream(t.device().index()).stream());
}
inline void cuda_ok(int status, const char* op) {
  TORCH_CHECK(status == 0, "bertperf.", op, ": CUDA kernel launch failed with cudaError_t ",
              status);
}
#endif

}  // namespace bind
}  // namespace bertperf
