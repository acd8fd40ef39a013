"""packed_attention: BERT attention read from and written to the packed layouts, no head copies.

    ctx = merge_heads(dropout(softmax(q k^T * scale + mask), p) v),  q, k, v = split_heads(qkv)

qkv: [B, S, 3h], the fused QKV projection's output (q | k | v, each h = A d wide, heads side by
side); mask: additive, [B, 1, 1, S] (or None); returns ctx [B, S, h], what the output
projection reads. The usual path views qkv as [B, A, S, d] and lets torch.matmul copy q, k and
v into contiguous buffers (and ctx and every gradient back), about 10 B S h floats moved per
layer that do no math. The `cpu` backend instead runs each of the four GEMMs as one MKL batch
over the B*A (batch, head) problems with pointers into qkv, ctx and the gradient of qkv
(`csrc/cpu/attention_gemm.cpp`), and the fused softmax of `bertperf.ops.softmax` in between:
the same numbers (same GEMM kernels, same dropout mask) without the copies. Forward + backward
against that composite (`python bench/bench_packed_attention.py`, 1 and 2 threads): 1.37-1.43x
at seq 128 (BERT-base and mini heads), 1.07-1.15x at seq 256; at seq 512, where the GEMMs
dominate, a one-off measurement found it 13% slower, so the model takes it at seq <= MAX_SEQ.

Only the `cpu` backend with fp32 has it (MKL has no batched bf16 GEMM with fp32 output that
torch exports); everything else, and a torch build without MKL, runs `packed_attention_ref`'s
composite with the softmax of the chosen backend. On a GPU the model's attention is SDPA.
"""
from __future__ import annotations

import functools

import torch
from torch import Tensor

from bertperf.ops.backend import draw_seed, kernels, resolve_backend
from bertperf.ops.softmax import softmax as ops_softmax
from bertperf.utils.errors import BertperfError

MAX_SEQ = 256  # longer sequences: the copies are a small share and the MKL batch is no faster


def split_heads(qkv: Tensor, heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """[B, S, 3h] -> q, k, v as [B, A, S, d] views (strided, no copy)."""
    b, s, three_h = qkv.shape
    d = three_h // (3 * heads)
    return qkv.view(b, s, 3, heads, d).permute(2, 0, 3, 1, 4).unbind(0)


def packed_attention_ref(qkv: Tensor, mask: Tensor | None, heads: int, p: float = 0.0,
                         training: bool = True, seed: int | None = None, backend: str = "torch") -> Tensor:
    """The composite: split heads, q k^T by matmul, the fused softmax op of `backend` (scale
    1/sqrt(d), additive mask, dropout with `seed`'s mask; "torch" = the pure-torch reference),
    probs v, merge heads. qkv [B, S, 3h] -> [B, S, h] in qkv's dtype."""
    b, s, three_h = qkv.shape
    q, k, v = split_heads(qkv, heads)
    scores = torch.matmul(q, k.transpose(-1, -2))
    probs = ops_softmax(scores, mask, q.shape[-1] ** -0.5, p, training, seed, backend)
    return torch.matmul(probs.to(v.dtype), v).transpose(1, 2).reshape(b, s, three_h // 3)


@functools.cache
def _gemm_available() -> bool:
    return bool(kernels("cpu", "attention_gemm").attention_gemm_available())


def flop_formulas() -> dict:
    """{op: formula} for torch's FlopCounterMode(custom_mapping=...): the GEMM FLOPs of the four
    ops, 2 B S^2 h per product (what the counter credits the copying path's bmm's). Loads the
    cpu kernels."""
    ops = kernels("cpu", "attention_gemm")

    def products(n: int, qkv_arg: int):
        def flops(*args, out_shape=None, **kwargs) -> int:
            b, s, three_h = args[qkv_arg]  # the counter passes shapes
            return n * 2 * b * s * s * (three_h // 3)
        return flops

    return {ops.attention_scores: products(1, 0), ops.attention_context: products(1, 1),
            ops.attention_context_bwd: products(2, 2), ops.attention_scores_bwd: products(2, 1)}


def packed_attention_supported(qkv: Tensor, backend: str) -> bool:
    """Whether `packed_attention` runs the copy-free GEMMs for this input on this resolved
    backend: cpu, fp32, seq <= MAX_SEQ, and an MKL in torch."""
    return (backend == "cpu" and qkv.dtype == torch.float32 and qkv.dim() == 3 and 0 < qkv.shape[1] <= MAX_SEQ
            and qkv.numel() > 0 and _gemm_available())


class _PackedAttentionFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv, mask, heads, scale, p, seed):  # type: ignore[override]
        ops = kernels("cpu", "attention_gemm")
        scores = ops.attention_scores(qkv, heads)
        y, probs = kernels("cpu", "softmax").softmax_fwd(scores, mask, scale, p, seed)
        out = ops.attention_context(y, qkv, heads)
        ctx.save_for_backward(qkv, y, probs if probs is not None else y)
        ctx.heads, ctx.scale, ctx.p, ctx.seed = heads, scale, p, seed
        return out

    @staticmethod
    def backward(ctx, dout):  # type: ignore[override]
        qkv, y, probs = ctx.saved_tensors
        ops = kernels("cpu", "attention_gemm")
        dprobs, dqkv = ops.attention_context_bwd(dout.contiguous(), y, qkv, ctx.heads)
        dscores = kernels("cpu", "softmax").softmax_bwd(dprobs, probs, ctx.scale, ctx.p, ctx.seed)
        ops.attention_scores_bwd(dscores, qkv, dqkv, ctx.heads)
        return dqkv, None, None, None, None, None


def packed_attention(qkv: Tensor, mask: Tensor | None, heads: int, p: float = 0.0, training: bool = True,
                     seed: int | None = None, backend: str = "auto") -> Tensor:
    """Attention over the packed qkv [B, S, 3h] -> ctx [B, S, h] (module docstring). mask:
    additive float [B, 1, 1, S] or None. The copy-free GEMMs where `packed_attention_supported`,
    else the composite; both give the same numbers for the same seed."""
    if qkv.dim() != 3 or qkv.shape[-1] % (3 * heads):
        raise BertperfError(f"packed_attention: qkv must be [B, S, 3 x heads x head_dim] with heads={heads}, "
                            f"got {tuple(qkv.shape)}")
    if not 0.0 <= p < 1.0:
        raise BertperfError(f"packed_attention: dropout probability must be in [0, 1), got {p}")
    p = p if training else 0.0
    chosen = resolve_backend(backend, qkv.device)
    if not packed_attention_supported(qkv, chosen):
        return packed_attention_ref(qkv, mask, heads, p, True, seed, chosen)
    if p > 0.0 and seed is None:
        seed = draw_seed()
    scale = (qkv.shape[-1] // (3 * heads)) ** -0.5
    if mask is not None:
        mask = mask.to(torch.float32)
    return _PackedAttentionFn.apply(qkv.contiguous(), mask, heads, scale, p, seed or 0)
