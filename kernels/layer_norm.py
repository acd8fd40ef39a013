"""Triton layer_norm: y = LN(x + bias + residual) * gamma + beta (see bertperf/ops/layer_norm.py).

Limits: the last dimension H <= 16384 (one program holds a whole row in registers, BLOCK =
next_power_of_2(H)); rows are any leading shape, made contiguous. Math in fp32, I/O in x.dtype.
Bytes moved per element (T = element size): forward reads x and residual, writes y: 3T
(+8 bytes per row for mean/rstd); backward reads dy, x, residual, writes dx: 4T (+ partial
column sums of 3 * 4 bytes * H per program).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from bertperf.kernels._common import check_input, check_like, check_param, reduction_programs
from bertperf.utils.errors import BertperfError

MAX_COLS = 16384


@triton.jit
def _ln_fwd_kernel(
    x_ptr,  # [rows, cols] T, contiguous
    res_ptr,  # [rows, cols] T, contiguous (ignored unless HAS_RES)
    bias_ptr,  # [cols] fp32 (ignored unless HAS_BIAS)
    gamma_ptr,  # [cols] fp32
    beta_ptr,  # [cols] fp32
    y_ptr,  # [rows, cols] T, contiguous
    mean_ptr,  # [rows] fp32
    rstd_ptr,  # [rows] fp32
    cols,  # int: row length (= row stride)
    eps,  # float
    HAS_BIAS: tl.constexpr,
    HAS_RES: tl.constexpr,
    BLOCK: tl.constexpr,  # next_power_of_2(cols)
):
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    m = offs < cols
    base = row.to(tl.int64) * cols
    s = tl.load(x_ptr + base + offs, mask=m, other=0.0).to(tl.float32)
    if HAS_BIAS:
        s += tl.load(bias_ptr + offs, mask=m, other=0.0)
    if HAS_RES:
        s += tl.load(res_ptr + base + offs, mask=m, other=0.0).to(tl.float32)
    mean = tl.sum(s, axis=0) / cols
    d = tl.where(m, s - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=0) / cols + eps)
    gamma = tl.load(gamma_ptr + offs, mask=m, other=0.0)
    beta = tl.load(beta_ptr + offs, mask=m, other=0.0)
    y = d * rstd * gamma + beta
    tl.store(y_ptr + base + offs, y.to(y_ptr.dtype.element_ty), mask=m)
    tl.store(mean_ptr + row, mean)
    tl.store(rstd_ptr + row, rstd)


@triton.jit
def _ln_bwd_kernel(
    dy_ptr,  # [rows, cols] T, contiguous
    x_ptr,  # [rows, cols] T, contiguous
    res_ptr,  # [rows, cols] T (ignored unless HAS_RES)
    bias_ptr,  # [cols] fp32 (ignored unless HAS_BIAS)
    gamma_ptr,  # [cols] fp32
    mean_ptr,  # [rows] fp32
    rstd_ptr,  # [rows] fp32
    dx_ptr,  # [rows, cols] T, contiguous
    part_ptr,  # [programs, 3, cols] fp32 partial sums: dgamma, dbeta, dbias
    rows,  # int
    cols,  # int
    HAS_BIAS: tl.constexpr,
    HAS_RES: tl.constexpr,
    BLOCK: tl.constexpr,  # next_power_of_2(cols)
):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    offs = tl.arange(0, BLOCK)
    m = offs < cols
    gamma = tl.load(gamma_ptr + offs, mask=m, other=0.0)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs, mask=m, other=0.0)
    acc_g = tl.zeros([BLOCK], dtype=tl.float32)
    acc_b = tl.zeros([BLOCK], dtype=tl.float32)
    acc_bias = tl.zeros([BLOCK], dtype=tl.float32)
    for row in range(pid, rows, nprog):
        base = tl.cast(row, tl.int64) * cols
        s = tl.load(x_ptr + base + offs, mask=m, other=0.0).to(tl.float32)
        if HAS_BIAS:
            s += bias
        if HAS_RES:
            s += tl.load(res_ptr + base + offs, mask=m, other=0.0).to(tl.float32)
        mean = tl.load(mean_ptr + row)
        rstd = tl.load(rstd_ptr + row)
        xhat = tl.where(m, (s - mean) * rstd, 0.0)
        dy = tl.load(dy_ptr + base + offs, mask=m, other=0.0).to(tl.float32)
        g = dy * gamma
        mean_g = tl.sum(g, axis=0) / cols
        mean_gx = tl.sum(g * xhat, axis=0) / cols
        ds = rstd * (g - mean_g - xhat * mean_gx)
        tl.store(dx_ptr + base + offs, ds.to(dx_ptr.dtype.element_ty), mask=m)
        acc_g += dy * xhat
        acc_b += dy
        acc_bias += tl.where(m, ds, 0.0)
    pbase = pid.to(tl.int64) * 3 * cols
    tl.store(part_ptr + pbase + offs, acc_g, mask=m)
    tl.store(part_ptr + pbase + cols + offs, acc_b, mask=m)
    tl.store(part_ptr + pbase + 2 * cols + offs, acc_bias, mask=m)


def _block(cols: int) -> int:
    if cols > MAX_COLS:
        raise BertperfError(f"bertperf.kernels.layer_norm: the last dimension is {cols}; the Triton "
                            f"kernel supports at most {MAX_COLS} (use the cpu/cuda/torch backend)")
    return triton.next_power_of_2(cols)


def layer_norm_fwd(x, bias, residual, gamma, beta, eps):
    """-> (y [..., H] x.dtype, mean [...] fp32, rstd [...] fp32). Same contract as the C++ op."""
    check_input(x, "layer_norm")
    cols = x.shape[-1]
    x = x.contiguous()
    res = check_like(residual, x, "layer_norm", "residual") if residual is not None else x
    b = check_param(bias, cols, "layer_norm", "bias") if bias is not None else gamma
    g = check_param(gamma, cols, "layer_norm", "gamma")
    be = check_param(beta, cols, "layer_norm", "beta")
    rows = x.numel() // cols
    y = torch.empty_like(x)
    mean = torch.empty(x.shape[:-1], dtype=torch.float32, device=x.device)
    rstd = torch.empty_like(mean)
    _ln_fwd_kernel[(rows,)](
        x, res, b, g, be, y, mean, rstd, cols, float(eps),
        HAS_BIAS=bias is not None, HAS_RES=residual is not None, BLOCK=_block(cols),
    )
    return y, mean, rstd


def layer_norm_bwd(dy, x, bias, residual, gamma, mean, rstd, y=None, beta=None):
    """-> (dx, dgamma, dbeta, dbias or None); parameter grads in the parameters' dtype. Same
    signature as the C++ op; y and beta (the forward's output and beta) are accepted and unused:
    this kernel always recomputes x + bias + residual."""
    check_input(x, "layer_norm")
    cols = x.shape[-1]
    x = x.contiguous()
    dy = check_like(dy, x, "layer_norm", "dy")
    res = check_like(residual, x, "layer_norm", "residual") if residual is not None else x
    b = check_param(bias, cols, "layer_norm", "bias") if bias is not None else gamma
    g = check_param(gamma, cols, "layer_norm", "gamma")
    rows = x.numel() // cols
    programs = reduction_programs(rows, x.device)
    part = torch.empty((programs, 3, cols), dtype=torch.float32, device=x.device)
    dx = torch.empty_like(x)
    _ln_bwd_kernel[(programs,)](
        dy, x, res, b, g, mean.contiguous(), rstd.contiguous(), dx, part, rows, cols,
        HAS_BIAS=bias is not None, HAS_RES=residual is not None, BLOCK=_block(cols),
    )
    sums = part.sum(0)
    dbias = sums[2].to(bias.dtype) if bias is not None else None
    return dx, sums[0].to(gamma.dtype), sums[1].to(gamma.dtype), dbias
