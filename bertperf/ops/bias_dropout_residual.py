"""bias_dropout_residual: bias add, dropout and residual add in one pass.

    y = residual + dropout(x + bias, p)

x, residual: [..., H] fp32 or bf16 (fp64 on the cpu backend); bias: [H] or None. Dropout uses
the shared counter-based mask (`bertperf.ops._dropout`): a seed drawn from torch's default
generator per call (or given), regenerated in the backward, so no mask is stored and every
kernel backend draws the same mask for the same seed. p = 0 or training=False: a fused add.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertperf.ops import _dropout
from bertperf.ops.backend import draw_seed, kernels, resolve_backend, upcast_all
from bertperf.utils.errors import BertperfError


def bias_dropout_residual_ref(
    x: Tensor,
    bias: Tensor | None,
    residual: Tensor,
    p: float = 0.0,
    training: bool = True,
    seed: int | None = None,
    upcast: bool = True,
) -> Tensor:
    """Pure-torch reference. With a seed, the dropout mask is the shared hash mask (what the
    kernels draw); without one, F.dropout (the eager composite). upcast=True computes in fp32."""
    dtype = x.dtype
    if upcast:
        x, bias, residual = upcast_all(x, bias, residual)
    v = x + bias if bias is not None else x
    if training and p > 0:
        if seed is None:
            v = F.dropout(v, p, training=True)
        else:
            v = v * _dropout.dropout_factor(seed, v.shape, p, v.device, v.dtype)
    return (residual + v).to(dtype)


class _BiasDropoutResidualFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bias, residual, p, seed, backend):  # type: ignore[override]
        y = kernels(backend, "bias_dropout_residual").bias_dropout_residual_fwd(x, bias, residual, p, seed)
        ctx.save_for_backward(bias)
        ctx.p, ctx.seed, ctx.backend = p, seed, backend
        return y

    @staticmethod
    def backward(ctx, dy):  # type: ignore[override]
        (bias,) = ctx.saved_tensors
        if ctx.p == 0.0:  # no dropout: dx = dresidual = dy itself (no copy), dbias its column sum
            dbias = dy.sum_to_size(bias.shape).to(bias.dtype) if bias is not None else None
            return dy, dbias, dy, None, None, None
        dx, dbias = kernels(ctx.backend, "bias_dropout_residual").bias_dropout_residual_bwd(
            dy, bias, ctx.p, ctx.seed)
        return dx, dbias, dy, None, None, None


def bias_dropout_residual(
    x: Tensor,
    bias: Tensor | None,
    residual: Tensor,
    p: float = 0.0,
    training: bool = True,
    seed: int | None = None,
    backend: str = "auto",
) -> Tensor:
    """residual + dropout(x + bias, p) on the chosen backend; returns [..., H] in x.dtype."""
    if not 0.0 <= p < 1.0:
        raise BertperfError(f"bias_dropout_residual: dropout probability must be in [0, 1), got {p}")
    p = p if training else 0.0
    chosen = resolve_backend(backend, x.device)
    if chosen == "torch" or x.numel() == 0:  # empty: nothing for a kernel to do
        return bias_dropout_residual_ref(x, bias, residual, p, True, seed, upcast=False)
    if p > 0.0 and seed is None:
        seed = draw_seed()
    return _BiasDropoutResidualFn.apply(x, bias, residual, p, seed or 0, chosen)


class BiasDropoutResidual(nn.Module):
    """forward(x, bias, residual) = residual + dropout(x + bias, p) (dropout only in training)."""

    def __init__(self, p: float = 0.1, kernel_backend: str = "auto"):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise BertperfError(f"BiasDropoutResidual: dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.kernel_backend = kernel_backend

    def forward(self, x: Tensor, bias: Tensor | None, residual: Tensor) -> Tensor:
        return bias_dropout_residual(x, bias, residual, self.p, self.training, None, self.kernel_backend)

    def extra_repr(self) -> str:
        return f"p={self.p}, kernel_backend={self.kernel_backend!r}"
