"""Triton bias_gelu: y = gelu(x + bias), erf ("none") or tanh form (see bertperf/ops/bias_gelu.py).

Limits: any [..., H] input (made contiguous); tiles of BLOCK_R rows x BLOCK_C columns. The tanh
form is written with sigmoid (tanh(u) = 2 sigmoid(2u) - 1) because tl.math.tanh does not run in
the Triton interpreter. Bytes moved per element (T = element size): forward reads x, writes y:
2T; backward reads dy, x, writes dx: 3T, plus partial dbias sums of 4 bytes x H per row block.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from bertperf.kernels._common import check_input, check_like, check_param
from bertperf.utils.errors import BertperfError

BLOCK_R = 16
BLOCK_C = 128


@triton.jit
def _gelu(v, TANH: tl.constexpr):
    if TANH:
        u = 0.7978845608028654 * (v + 0.044715 * v * v * v)
        return 0.5 * v * (2.0 * tl.sigmoid(2.0 * u))  # 1 + tanh(u) = 2 sigmoid(2u)
    else:
        return 0.5 * v * (1.0 + tl.math.erf(v * 0.7071067811865476))


@triton.jit
def _gelu_grad(v, TANH: tl.constexpr):
    if TANH:
        u = 0.7978845608028654 * (v + 0.044715 * v * v * v)
        t = 2.0 * tl.sigmoid(2.0 * u) - 1.0
        return 0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * 0.7978845608028654 * (1.0 + 0.134145 * v * v)
    else:
        cdf = 0.5 * (1.0 + tl.math.erf(v * 0.7071067811865476))
        return cdf + v * tl.exp(-0.5 * v * v) * 0.3989422804014327


@triton.jit
def _bias_gelu_fwd_kernel(
    x_ptr,  # [rows, cols] T, contiguous
    bias_ptr,  # [cols] fp32 (ignored unless HAS_BIAS)
    y_ptr,  # [rows, cols] T, contiguous
    rows,  # int
    cols,  # int: row length (= row stride)
    HAS_BIAS: tl.constexpr,
    TANH: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)[:, None]
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)[None, :]
    m = (r < rows) & (c < cols)
    offs = r.to(tl.int64) * cols + c
    v = tl.load(x_ptr + offs, mask=m, other=0.0).to(tl.float32)
    if HAS_BIAS:
        v += tl.load(bias_ptr + c, mask=c < cols, other=0.0)
    tl.store(y_ptr + offs, _gelu(v, TANH).to(y_ptr.dtype.element_ty), mask=m)


@triton.jit
def _bias_gelu_bwd_kernel(
    dy_ptr,  # [rows, cols] T, contiguous
    x_ptr,  # [rows, cols] T, contiguous
    bias_ptr,  # [cols] fp32 (ignored unless HAS_BIAS)
    dx_ptr,  # [rows, cols] T, contiguous
    part_ptr,  # [cdiv(rows, BLOCK_R), cols] fp32 partial dbias per row block
    rows,  # int
    cols,  # int
    HAS_BIAS: tl.constexpr,
    TANH: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    rb = tl.program_id(0)
    r = rb * BLOCK_R + tl.arange(0, BLOCK_R)[:, None]
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)[None, :]
    m = (r < rows) & (c < cols)
    offs = r.to(tl.int64) * cols + c
    v = tl.load(x_ptr + offs, mask=m, other=0.0).to(tl.float32)
    if HAS_BIAS:
        v += tl.load(bias_ptr + c, mask=c < cols, other=0.0)
    dy = tl.load(dy_ptr + offs, mask=m, other=0.0).to(tl.float32)
    g = tl.where(m, dy * _gelu_grad(v, TANH), 0.0)
    tl.store(dx_ptr + offs, g.to(dx_ptr.dtype.element_ty), mask=m)
    if HAS_BIAS:
        cc = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        tl.store(part_ptr + rb.to(tl.int64) * cols + cc, tl.sum(g, axis=0), mask=cc < cols)


def _approx(approximate: str) -> bool:
    if approximate not in ("none", "tanh"):
        raise BertperfError(f"bertperf.kernels.bias_gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return approximate == "tanh"


def bias_gelu_fwd(x, bias, approximate):
    """-> y [..., H] in x.dtype. Same contract as torch.ops.bertperf.bias_gelu_fwd."""
    check_input(x, "bias_gelu")
    tanh = _approx(approximate)
    cols = x.shape[-1]
    x = x.contiguous()
    rows = x.numel() // cols
    b = check_param(bias, cols, "bias_gelu", "bias") if bias is not None else x
    y = torch.empty_like(x)
    grid = (triton.cdiv(rows, BLOCK_R), triton.cdiv(cols, BLOCK_C))
    _bias_gelu_fwd_kernel[grid](x, b, y, rows, cols, HAS_BIAS=bias is not None, TANH=tanh,
                                BLOCK_R=BLOCK_R, BLOCK_C=BLOCK_C)
    return y


def bias_gelu_bwd(dy, x, bias, approximate):
    """-> (dx, dbias or None); dbias in bias.dtype."""
    check_input(x, "bias_gelu")
    tanh = _approx(approximate)
    cols = x.shape[-1]
    x = x.contiguous()
    dy = check_like(dy, x, "bias_gelu", "dy")
    rows = x.numel() // cols
    b = check_param(bias, cols, "bias_gelu", "bias") if bias is not None else x
    dx = torch.empty_like(x)
    blocks = triton.cdiv(rows, BLOCK_R)
    part = torch.empty((blocks, cols) if bias is not None else (1,), dtype=torch.float32, device=x.device)
    _bias_gelu_bwd_kernel[(blocks, triton.cdiv(cols, BLOCK_C))](
        dy, x, b, dx, part, rows, cols, HAS_BIAS=bias is not None, TANH=tanh,
        BLOCK_R=BLOCK_R, BLOCK_C=BLOCK_C)
    return dx, (part.sum(0).to(bias.dtype) if bias is not None else None)
