"""Triton attention softmax: y = dropout(softmax(x * scale + mask), p) (bertperf/ops/softmax.py).

Limits: scores [..., Sq, Sk] with at most 4 dims, Sk <= 16384 (one program holds a row,
BLOCK = next_power_of_2(Sk)), fewer than 2^31 elements (int32 flat indices feed the dropout
hash). The additive mask broadcasts through element strides (0 for a broadcast dim). Bytes moved
per element (T = element size): forward reads x, writes y: 2T (3T with dropout: probs too);
backward reads dy, probs, writes dx: 3T.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from bertperf.kernels._common import check_input, check_like
from bertperf.kernels._rng import dropout_factor
from bertperf.ops import _dropout
from bertperf.utils.errors import BertperfError

MAX_COLS = 16384


@triton.jit
def _softmax_fwd_kernel(
    x_ptr,  # [rows, cols] T, contiguous
    mask_ptr,  # fp32, row (b, h, q) at b*sb + h*sh + q*sq, contiguous last dim (ignored unless HAS_MASK)
    y_ptr,  # [rows, cols] T: dropped-out probabilities
    probs_ptr,  # [rows, cols] T: pre-dropout probabilities (ignored unless DROPOUT)
    cols,  # int: Sk (= row stride)
    heads,  # int: H
    q_len,  # int: Sq
    sb,  # int: mask stride of the batch dim (elements)
    sh,  # int: mask stride of the head dim
    sq,  # int: mask stride of the query dim
    scale,  # float
    seed_lo,  # int
    seed_hi,  # int
    threshold,  # int: keep iff hash >= threshold
    inv_keep,  # float
    HAS_MASK: tl.constexpr,
    DROPOUT: tl.constexpr,
    BLOCK: tl.constexpr,  # next_power_of_2(cols)
):
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    m = offs < cols
    flat = row * cols + offs
    v = tl.load(x_ptr + flat, mask=m, other=0.0).to(tl.float32) * scale
    if HAS_MASK:
        q = row % q_len
        bh = row // q_len
        moff = (bh // heads) * sb + (bh % heads) * sh + q * sq
        v += tl.load(mask_ptr + moff + offs, mask=m, other=0.0)
    v = tl.where(m, v, -float("inf"))
    e = tl.exp(v - tl.max(v, axis=0))
    p = e / tl.sum(e, axis=0)
    if DROPOUT:
        tl.store(probs_ptr + flat, p.to(probs_ptr.dtype.element_ty), mask=m)
        p = p * dropout_factor(flat, seed_lo, seed_hi, threshold, inv_keep)
    tl.store(y_ptr + flat, p.to(y_ptr.dtype.element_ty), mask=m)


@triton.jit
def _softmax_bwd_kernel(
    dy_ptr,  # [rows, cols] T, contiguous
    probs_ptr,  # [rows, cols] T: pre-dropout probabilities
    dx_ptr,  # [rows, cols] T
    cols,  # int
    scale,  # float
    seed_lo,  # int
    seed_hi,  # int
    threshold,  # int
    inv_keep,  # float
    DROPOUT: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    m = offs < cols
    flat = row * cols + offs
    g = tl.load(dy_ptr + flat, mask=m, other=0.0).to(tl.float32)
    if DROPOUT:
        g = g * dropout_factor(flat, seed_lo, seed_hi, threshold, inv_keep)
    p = tl.load(probs_ptr + flat, mask=m, other=0.0).to(tl.float32)
    dot = tl.sum(g * p, axis=0)
    tl.store(dx_ptr + flat, (scale * p * (g - dot)).to(dx_ptr.dtype.element_ty), mask=m)


def _check(x: torch.Tensor, p: float) -> int:
    check_input(x, "softmax")
    if x.dim() > 4:
        raise BertperfError(f"bertperf.kernels.softmax: scores must have at most 4 dims, got {tuple(x.shape)}")
    if x.shape[-1] > MAX_COLS or x.numel() >= 2**31:
        raise BertperfError(f"bertperf.kernels.softmax: Sk <= {MAX_COLS} and < 2^31 elements supported, "
                            f"got {tuple(x.shape)}; use the cpu/cuda/torch backend")
    if not 0.0 <= p < 1.0:
        raise BertperfError(f"bertperf.kernels.softmax: dropout probability must be in [0, 1), got {p}")
    return triton.next_power_of_2(x.shape[-1])


def softmax_fwd(x, mask, scale, p, seed):
    """-> (y, probs or None). Same contract as torch.ops.bertperf.softmax_fwd."""
    block = _check(x, p)
    x = x.contiguous()
    shape4 = (1,) * (4 - x.dim()) + tuple(x.shape)
    cols = shape4[3]
    strides = (0, 0, 0)
    m = x
    if mask is not None:
        if mask.dim() > 4:
            raise BertperfError(f"bertperf.kernels.softmax: `mask` must have at most 4 dims, got {tuple(mask.shape)}")
        m = mask.float().reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))
        try:
            m = m.expand(shape4)
        except RuntimeError as e:
            raise BertperfError(f"bertperf.kernels.softmax: `mask` of shape {tuple(mask.shape)} does not "
                                f"broadcast to the scores' shape {tuple(x.shape)}") from e
        if m.stride(3) != 1:
            m = m.contiguous()
        strides = (m.stride(0), m.stride(1), m.stride(2))
    th = _dropout.threshold(p)
    lo, hi = _dropout.split_seed(seed)
    y = torch.empty_like(x)
    probs = torch.empty_like(x) if th else None
    rows = x.numel() // cols
    _softmax_fwd_kernel[(rows,)](
        x, m, y, probs if probs is not None else y, cols, shape4[1], shape4[2], *strides, float(scale),
        lo, hi, th, _dropout.inv_keep(p), HAS_MASK=mask is not None, DROPOUT=th != 0, BLOCK=block)
    return y, probs


def softmax_bwd(dy, probs, scale, p, seed):
    """-> dx. probs are the pre-dropout probabilities (y itself without dropout)."""
    block = _check(probs, p)
    probs = probs.contiguous()
    dy = check_like(dy, probs, "softmax", "dy")
    th = _dropout.threshold(p)
    lo, hi = _dropout.split_seed(seed)
    dx = torch.empty_like(probs)
    cols = probs.shape[-1]
    _softmax_bwd_kernel[(probs.numel() // cols,)](
        dy, probs, dx, cols, float(scale), lo, hi, th, _dropout.inv_keep(p), DROPOUT=th != 0, BLOCK=block)
    return dx
