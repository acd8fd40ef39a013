"""softmax: the attention softmax fused with the scale, the additive padding mask and (when
enabled) attention dropout, for the attention path that does not use SDPA.

    y = dropout(softmax(x * scale + mask, dim=-1), p)

x: attention scores [B, H, Sq, Sk] (at most 4 dims) in fp32 or bf16 (fp64 on the cpu backend);
mask: additive, broadcastable to x (HF's [B, 1, 1, Sk] extended mask), never differentiated.
With dropout the forward also keeps the pre-dropout probabilities for the backward and the mask
is regenerated from the seed (`bertperf.ops._dropout`); without dropout only y is kept.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from bertperf.ops import _dropout
from bertperf.ops.backend import draw_seed, kernels, resolve_backend, upcast_all
from bertperf.utils.errors import BertperfError


def softmax_ref(
    x: Tensor,
    mask: Tensor | None = None,
    scale: float = 1.0,
    p: float = 0.0,
    training: bool = True,
    seed: int | None = None,
    upcast: bool = True,
) -> Tensor:
    """Pure-torch reference. With a seed the dropout mask is the shared hash mask (what the
    kernels draw); without one, F.dropout (the eager composite). upcast=True computes in fp32."""
    dtype = x.dtype
    if upcast:
        x, mask = upcast_all(x, mask)
    v = x * scale
    if mask is not None:
        v = v + mask
    y = torch.softmax(v, dim=-1)
    if training and p > 0:
        if seed is None:
            y = torch.nn.functional.dropout(y, p, training=True)
        else:
            y = y * _dropout.dropout_factor(seed, y.shape, p, y.device, y.dtype)
    return y.to(dtype)


class _SoftmaxFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, mask, scale, p, seed, backend):  # type: ignore[override]
        y, probs = kernels(backend, "softmax").softmax_fwd(x, mask, scale, p, seed)
        ctx.save_for_backward(probs if probs is not None else y)
        ctx.scale, ctx.p, ctx.seed, ctx.backend = scale, p, seed, backend
        return y

    @staticmethod
    def backward(ctx, dy):  # type: ignore[override]
        (probs,) = ctx.saved_tensors
        dx = kernels(ctx.backend, "softmax").softmax_bwd(dy, probs, ctx.scale, ctx.p, ctx.seed)
        return dx, None, None, None, None, None


def softmax(
    x: Tensor,
    mask: Tensor | None = None,
    scale: float = 1.0,
    p: float = 0.0,
    training: bool = True,
    seed: int | None = None,
    backend: str = "auto",
) -> Tensor:
    """dropout(softmax(x * scale + mask)) on the chosen backend; returns x's shape and dtype."""
    if not 0.0 <= p < 1.0:
        raise BertperfError(f"softmax: dropout probability must be in [0, 1), got {p}")
    if mask is not None and mask.requires_grad:
        raise BertperfError("softmax: the additive mask is a constant; detach it (no gradient flows to it)")
    p = p if training else 0.0
    chosen = resolve_backend(backend, x.device)
    if chosen == "torch" or x.numel() == 0:  # empty: nothing for a kernel to do
        return softmax_ref(x, mask, scale, p, True, seed, upcast=False)
    if p > 0.0 and seed is None:
        seed = draw_seed()
    return _SoftmaxFn.apply(x, mask, float(scale), p, seed or 0, chosen)


class AttentionSoftmax(nn.Module):
    """forward(scores, mask=None, scale=1.0) = dropout(softmax(scores * scale + mask), p)."""

    def __init__(self, p: float = 0.1, kernel_backend: str = "auto"):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise BertperfError(f"AttentionSoftmax: dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.kernel_backend = kernel_backend

    def forward(self, scores: Tensor, mask: Tensor | None = None, scale: float = 1.0) -> Tensor:
        return softmax(scores, mask, scale, self.p, self.training, None, self.kernel_backend)

    def extra_repr(self) -> str:
        return f"p={self.p}, kernel_backend={self.kernel_backend!r}"
