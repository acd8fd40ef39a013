"""Triton bias_dropout_residual: y = residual + dropout(x + bias, p) (bertperf/ops/bias_dropout_residual.py).

Limits: any [..., H] input (made contiguous), fewer than 2^31 elements (int32 flat indices
feed the dropout hash); tiles of BLOCK_R x BLOCK_C. The mask is the shared counter-based hash
(kernels/_rng.py), identical to the CPU/CUDA kernels for the same seed. Bytes moved per element
(T = element size): forward reads x, residual, writes y: 3T; backward reads dy, writes dx: 2T
(+ partial dbias sums, 4 bytes x H per row block).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from bertperf.kernels._common import check_input, check_like, check_param
from bertperf.kernels._rng import dropout_factor
from bertperf.ops import _dropout
from bertperf.utils.errors import BertperfError

BLOCK_R = 16
BLOCK_C = 128


@triton.jit
def _bdr_fwd_kernel(
    x_ptr,  # [rows, cols] T, contiguous
    bias_ptr,  # [cols] fp32 (ignored unless HAS_BIAS)
    res_ptr,  # [rows, cols] T, contiguous
    y_ptr,  # [rows, cols] T, contiguous
    rows,  # int
    cols,  # int: row length (= row stride)
    seed_lo,  # int: low 32 bits of the dropout seed
    seed_hi,  # int: high 32 bits
    threshold,  # int: keep iff hash >= threshold (0: no dropout)
    inv_keep,  # float: 1 / (1 - p), 1 without dropout
    HAS_BIAS: tl.constexpr,
    DROPOUT: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)[:, None]
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)[None, :]
    m = (r < rows) & (c < cols)
    offs = r * cols + c
    v = tl.load(x_ptr + offs, mask=m, other=0.0).to(tl.float32)
    if HAS_BIAS:
        v += tl.load(bias_ptr + c, mask=c < cols, other=0.0)
    if DROPOUT:
        v = v * dropout_factor(offs, seed_lo, seed_hi, threshold, inv_keep)
    y = tl.load(res_ptr + offs, mask=m, other=0.0).to(tl.float32) + v
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=m)


@triton.jit
def _bdr_bwd_kernel(
    dy_ptr,  # [rows, cols] T, contiguous
    dx_ptr,  # [rows, cols] T, contiguous
    part_ptr,  # [cdiv(rows, BLOCK_R), cols] fp32 partial dbias per row block
    rows,  # int
    cols,  # int
    seed_lo,  # int
    seed_hi,  # int
    threshold,  # int
    inv_keep,  # float
    HAS_BIAS: tl.constexpr,
    DROPOUT: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    rb = tl.program_id(0)
    r = rb * BLOCK_R + tl.arange(0, BLOCK_R)[:, None]
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)[None, :]
    m = (r < rows) & (c < cols)
    offs = r * cols + c
    g = tl.load(dy_ptr + offs, mask=m, other=0.0).to(tl.float32)
    if DROPOUT:
        g = g * dropout_factor(offs, seed_lo, seed_hi, threshold, inv_keep)
    tl.store(dx_ptr + offs, g.to(dx_ptr.dtype.element_ty), mask=m)
    if HAS_BIAS:
        cc = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        tl.store(part_ptr + rb * cols + cc, tl.sum(g, axis=0), mask=cc < cols)


def _drop_args(p: float, seed: int) -> tuple[int, int, int, float]:
    if not 0.0 <= p < 1.0:
        raise BertperfError(f"bertperf.kernels.bias_dropout_residual: dropout probability must be in [0, 1), got {p}")
    lo, hi = _dropout.split_seed(seed)
    return lo, hi, _dropout.threshold(p), _dropout.inv_keep(p)


def _check_size(x: torch.Tensor) -> None:
    if x.numel() >= 2**31:
        raise BertperfError("bertperf.kernels.bias_dropout_residual: at most 2^31 - 1 elements "
                            f"(got {x.numel()}); use the cuda backend")


def bias_dropout_residual_fwd(x, bias, residual, p, seed):
    """-> y [..., H] in x.dtype. Same contract as torch.ops.bertperf.bias_dropout_residual_fwd."""
    check_input(x, "bias_dropout_residual")
    _check_size(x)
    cols = x.shape[-1]
    x = x.contiguous()
    res = check_like(residual, x, "bias_dropout_residual", "residual")
    b = check_param(bias, cols, "bias_dropout_residual", "bias") if bias is not None else x
    lo, hi, th, ik = _drop_args(p, seed)
    rows = x.numel() // cols
    y = torch.empty_like(x)
    grid = (triton.cdiv(rows, BLOCK_R), triton.cdiv(cols, BLOCK_C))
    _bdr_fwd_kernel[grid](x, b, res, y, rows, cols, lo, hi, th, ik, HAS_BIAS=bias is not None,
                          DROPOUT=th != 0, BLOCK_R=BLOCK_R, BLOCK_C=BLOCK_C)
    return y


def bias_dropout_residual_bwd(dy, bias, p, seed):
    """-> (dx, dbias or None); dresidual is dy itself."""
    check_input(dy, "bias_dropout_residual", "dy")
    _check_size(dy)
    cols = dy.shape[-1]
    dy = dy.contiguous()
    if bias is not None:
        check_param(bias, cols, "bias_dropout_residual", "bias")
    lo, hi, th, ik = _drop_args(p, seed)
    rows = dy.numel() // cols
    dx = torch.empty_like(dy)
    blocks = triton.cdiv(rows, BLOCK_R)
    part = torch.empty((blocks, cols) if bias is not None else (1,), dtype=torch.float32, device=dy.device)
    _bdr_bwd_kernel[(blocks, triton.cdiv(cols, BLOCK_C))](
        dy, dx, part, rows, cols, lo, hi, th, ik, HAS_BIAS=bias is not None, DROPOUT=th != 0,
        BLOCK_R=BLOCK_R, BLOCK_C=BLOCK_C)
    return dx, (part.sum(0).to(bias.dtype) if bias is not None else None)
