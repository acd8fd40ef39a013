"""bias_gelu: the bias add fused with GELU, erf form (approximate="none") or tanh form.

    y = gelu(x + bias)

x: [..., H] fp32 or bf16 (fp64 on the cpu backend); bias: [H] or None. The fused backward
recomputes x + bias from the saved input (nothing else is stored) and returns dbias as the row
sum of dx. Backends: see `bertperf.ops.backend`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertperf.ops.backend import kernels, resolve_backend, upcast_all
from bertperf.utils.errors import BertperfError

APPROXIMATIONS = ("none", "tanh")


def _check_approx(approximate: str) -> None:
    if approximate not in APPROXIMATIONS:
        raise BertperfError(f"bias_gelu: approximate must be 'none' (erf) or 'tanh', got {approximate!r}")


def bias_gelu_ref(x: Tensor, bias: Tensor | None = None, approximate: str = "none", upcast: bool = True) -> Tensor:
    """Pure-torch reference: F.gelu(x + bias). upcast=True computes in fp32 (fp64 stays fp64)."""
    dtype = x.dtype
    if upcast:
        x, bias = upcast_all(x, bias)
    v = x + bias if bias is not None else x
    return F.gelu(v, approximate=approximate).to(dtype)


class _BiasGeluFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bias, approximate, backend):  # type: ignore[override]
        y = kernels(backend, "bias_gelu").bias_gelu_fwd(x, bias, approximate)
        ctx.save_for_backward(x, bias)
        ctx.approximate, ctx.backend = approximate, backend
        return y

    @staticmethod
    def backward(ctx, dy):  # type: ignore[override]
        x, bias = ctx.saved_tensors
        dx, dbias = kernels(ctx.backend, "bias_gelu").bias_gelu_bwd(dy, x, bias, ctx.approximate)
        return dx, dbias, None, None


def bias_gelu(x: Tensor, bias: Tensor | None = None, approximate: str = "none", backend: str = "auto") -> Tensor:
    """gelu(x + bias) on the chosen backend; returns [..., H] in x.dtype."""
    _check_approx(approximate)
    chosen = resolve_backend(backend, x.device)
    if chosen == "torch" or x.numel() == 0:  # empty (e.g. no masked token): nothing for a kernel to do
        return bias_gelu_ref(x, bias, approximate, upcast=False)
    return _BiasGeluFn.apply(x, bias, approximate, chosen)


class BiasGelu(nn.Module):
    """Activation module for BERT's intermediate layer: forward(x, bias) = gelu(x + bias).

    Pair it with a Linear created with bias=False and pass that layer's bias here (the model
    keeps the bias parameter where checkpoints expect it)."""

    def __init__(self, approximate: str = "none", kernel_backend: str = "auto"):
        super().__init__()
        _check_approx(approximate)
        self.approximate = approximate
        self.kernel_backend = kernel_backend

    def forward(self, x: Tensor, bias: Tensor | None = None) -> Tensor:
        return bias_gelu(x, bias, self.approximate, self.kernel_backend)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}, kernel_backend={self.kernel_backend!r}"
