"""layer_norm: LayerNorm fused with the residual add and the preceding bias.

    y = LayerNorm(x + bias + residual) * gamma + beta        (over the last dimension)

x, residual: [..., H] in fp32 or bf16; bias, gamma, beta: [H]. bias and residual are optional
(BERT's post-LN sublayer output passes the dense bias and the residual). The fused forward saves
per-row mean and rstd (fp32) and keeps references to its inputs and its output y (no copies:
the model holds them anyway), so nothing new of size [..., H] is stored. Every backend's
backward receives the same saved tensors; the CPU one takes xhat = (y - beta) / gamma from the
output in fp32/fp64 (reading dy and y: 3 passes instead of 4) and recomputes x + bias + residual
in bf16 or when some gamma is ~0 (see csrc/include/bertperf/layer_norm.h); Triton and CUDA
always recompute. Backends: see `bertperf.ops.backend`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertperf.ops.backend import kernels, resolve_backend, upcast_all


def layer_norm_ref(
    x: Tensor,
    gamma: Tensor,
    beta: Tensor,
    bias: Tensor | None = None,
    residual: Tensor | None = None,
    eps: float = 1e-12,
    upcast: bool = True,
) -> Tensor:
    """Pure-torch reference. upcast=True computes in fp32 (fp64 stays fp64) and returns x.dtype
    (the test reference); upcast=False is the eager composite a model would write (the `torch`
    backend and the bench baseline)."""
    dtype = x.dtype
    if upcast:
        x, gamma, beta, bias, residual = upcast_all(x, gamma, beta, bias, residual)
    s = x
    if bias is not None:
        s = s + bias
    if residual is not None:
        s = s + residual
    y = F.layer_norm(s, (s.shape[-1],), gamma, beta, eps)
    return y.to(dtype)


class _LayerNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, gamma, beta, bias, residual, eps, backend):  # type: ignore[override]
        k = kernels(backend, "layer_norm")
        y, mean, rstd = k.layer_norm_fwd(x, bias, residual, gamma, beta, eps)
        ctx.save_for_backward(x, gamma, beta, bias, residual, mean, rstd, y)
        ctx.backend = backend
        return y

    @staticmethod
    def backward(ctx, dy):  # type: ignore[override]
        x, gamma, beta, bias, residual, mean, rstd, y = ctx.saved_tensors
        k = kernels(ctx.backend, "layer_norm")
        dx, dgamma, dbeta, dbias = k.layer_norm_bwd(dy, x, bias, residual, gamma, mean, rstd, y, beta)
        dres = dx if residual is not None else None
        return dx, dgamma, dbeta, dbias, dres, None, None


def layer_norm(
    x: Tensor,
    gamma: Tensor,
    beta: Tensor,
    bias: Tensor | None = None,
    residual: Tensor | None = None,
    eps: float = 1e-12,
    backend: str = "auto",
) -> Tensor:
    """Fused LN(x + bias + residual) * gamma + beta on the chosen backend; returns [..., H]."""
    chosen = resolve_backend(backend, x.device)
    if chosen == "torch" or x.numel() == 0:  # empty (e.g. no masked token): nothing for a kernel to do
        return layer_norm_ref(x, gamma, beta, bias, residual, eps, upcast=False)
    return _LayerNormFn.apply(x, gamma, beta, bias, residual, eps, chosen)


class FusedLayerNorm(nn.Module):
    """nn.LayerNorm-compatible module (parameters `weight`, `bias`) whose forward also takes the
    residual and the preceding dense layer's bias: forward(x, residual=None, bias=None)."""

    def __init__(self, hidden_size: int, eps: float = 1e-12, kernel_backend: str = "auto"):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.bias = nn.Parameter(torch.zeros(hidden_size))
        self.eps = eps
        self.kernel_backend = kernel_backend

    def forward(self, x: Tensor, residual: Tensor | None = None, bias: Tensor | None = None) -> Tensor:
        return layer_norm(x, self.weight, self.bias, bias, residual, self.eps, self.kernel_backend)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, kernel_backend={self.kernel_backend!r}"
