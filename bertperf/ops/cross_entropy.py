"""cross_entropy: a classifier's bias add, mean softmax cross-entropy, accuracy count and the
logits gradient, in one pass over the [M, V] logits.

    y = x + bias;  loss = mean_r (logsumexp(y[r]) - y[r, labels[r]]);  correct = #{r: y[r, label] = max y[r]}

x: [M, V] logits without the bias (fp32 or bf16; fp64 on the cpu backend), bias: [V] or None,
labels: int [M] in [0, V) (no ignore index: pass only the rows that have a label). Returns
(loss scalar in fp32, fp64 for fp64 x; correct int64 scalar; y [M, V] in x's dtype). Made for
the MLM head (M masked tokens x a 30522-word vocabulary): the eager composite adds the bias (a
broadcast copy), runs a softmax, two max passes, and in the backward a scaling pass and a column
sum for the bias gradient; the kernel reads x once and writes y and the gradient once
(`bertperf/cross_entropy.h`), computing the gradient of the mean loss and the bias gradient in
the forward. The backward only scales them when the incoming gradient is not 1 (and adds y's
gradient if y was used); it keeps no [M, V] buffer beyond the gradient itself.
A tie with the maximal logit counts as correct.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from bertperf.ops.backend import kernels, resolve_backend, upcast_all
from bertperf.utils.errors import BertperfError


def cross_entropy_ref(x: Tensor, bias: Tensor | None, labels: Tensor, upcast: bool = True
                      ) -> tuple[Tensor, Tensor, Tensor]:
    """Pure-torch reference (autograd through torch ops): (mean loss fp32, correct count, y).
    upcast=True computes y in fp32 (returned in x's dtype either way)."""
    dtype = x.dtype
    if upcast:
        x, bias = upcast_all(x, bias)
    y = x + bias.to(x.dtype) if bias is not None else x
    loss = F.cross_entropy(y.to(torch.promote_types(y.dtype, torch.float32)), labels.long())
    with torch.no_grad():
        picked = y.gather(1, labels.long()[:, None]).squeeze(1)
        correct = (picked == y.amax(-1)).sum()
    return loss, correct, y.to(dtype)


class _CrossEntropyFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bias, labels, backend):  # type: ignore[override]
        ctx.set_materialize_grads(False)
        y, grad, loss, correct, dbias = kernels(backend, "cross_entropy").cross_entropy_fwd(
            x, bias, labels, 1.0 / x.shape[0])
        # kept on ctx, not save_for_backward: the backward hands them on as they are (no copy)
        ctx.grad, ctx.dbias = grad, dbias
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.mark_non_differentiable(correct)
        if y is None:  # no bias: the logits are x itself
            y = x.detach().view_as(x)
        return loss.mean(), correct.sum(), y

    @staticmethod
    def backward(ctx, dloss, dcorrect, dy):  # type: ignore[override]
        grad, dbias = ctx.grad, ctx.dbias
        dx = dbias_out = None
        if dloss is not None:
            scale = float(dloss)  # 1.0 unless the loss is weighted or scaled
            dx = grad if scale == 1.0 else grad * scale
            dbias_out = dbias if dbias is None or scale == 1.0 else dbias * scale
        if dy is not None:
            dx = dy if dx is None else dx + dy
            if ctx.bias_dtype is not None:
                s = dy.to(torch.promote_types(dy.dtype, torch.float32)).sum(0)
                dbias_out = s if dbias_out is None else dbias_out + s
        if dbias_out is not None and ctx.bias_dtype is not None:
            dbias_out = dbias_out.to(ctx.bias_dtype)
        return dx, dbias_out, None, None


def cross_entropy(x: Tensor, bias: Tensor | None, labels: Tensor, backend: str = "auto"
                  ) -> tuple[Tensor, Tensor, Tensor]:
    """(mean loss fp32, correct count int64, logits y = x + bias) on the chosen backend; see the
    module docstring. The count has no gradient."""
    if x.dim() != 2 or labels.shape != x.shape[:1]:
        raise BertperfError(f"cross_entropy: logits must be [M, V] and labels [M], got {tuple(x.shape)} "
                            f"and {tuple(labels.shape)}")
    if bias is not None and bias.shape != x.shape[1:]:
        raise BertperfError(f"cross_entropy: bias must be [{x.shape[1]}], got {tuple(bias.shape)}")
    chosen = resolve_backend(backend, x.device)
    if chosen == "torch" or x.numel() == 0:  # empty: nothing for a kernel to do
        return cross_entropy_ref(x, bias, labels, upcast=False)
    return _CrossEntropyFn.apply(x, bias, labels, chosen)
