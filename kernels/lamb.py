"""Triton LAMB (NVLAMB): the kernels behind `bertperf.optim.Lamb(backend="triton")`.

The math is the module docstring of bertperf/optim/lamb.py. One launch per tensor and stage
(no pointer tables), BLOCK elements per program:

* `_sq_norm_kernel`: per-program partial sums of x^2 (the global gradient norm).
* `_moments_kernel` (stage 1): reads p (fp32 master), g (fp32 or bf16), m, v; writes m, v;
  per-program partial sums of p^2 and u^2 with u = m_hat / (sqrt(v_hat) + eps) + wd * p.
* `_apply_kernel` (stage 2): reads p, m, v, recomputes u, writes p -= step * u (and the bf16
  parameter). The step size is read from a device tensor (`_step_size_kernel` turns the norms
  into lr * trust ratio), so the host never waits for the trust ratios.

Bytes per element of a fp32 step: 4 (gradient norm) + 16 read + 8 written (stage 1) + 12 read + 4
written (stage 2). Partial sums are fp32 per program, summed in fp64 by torch. Tensors must be
contiguous; on CPU tensors only under the Triton interpreter (TRITON_INTERPRET=1).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from bertperf.kernels._common import interpreting
from bertperf.utils.errors import BertperfError

BLOCK = 1024


@triton.jit
def _sq_norm_kernel(x_ptr, part_ptr, n, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n, other=0.0).to(tl.float32)
    tl.store(part_ptr + pid, tl.sum(x * x, axis=0))


@triton.jit
def _update(p, m, v, inv_bc1, inv_bc2, eps, wd):
    """u = (m * inv_bc1) / (sqrt(v * inv_bc2) + eps) + wd * p (all fp32)."""
    return (m * inv_bc1) / (tl.sqrt(v * inv_bc2) + eps) + wd * p


@triton.jit
def _bf16_rne(x):
    """fp32 -> bf16 rounding to nearest even, done on the bits: the interpreter's cast truncates."""
    bits = x.to(tl.uint32, bitcast=True)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    rounded = tl.where(x == x, rounded, 0x7FC0)  # NaN stays a (quiet) NaN
    return rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True)


@triton.jit
def _moments_kernel(
    p_ptr,  # [n] fp32 master
    g_ptr,  # [n] fp32 or bf16
    m_ptr,  # [n] fp32, updated in place
    v_ptr,  # [n] fp32, updated in place
    part_ptr,  # [2, programs] fp32: partial sums of p^2 (row 0) and u^2 (row 1)
    n,
    programs,
    beta1, beta2, one_minus_beta1, one_minus_beta2, clip, inv_bc1, inv_bc2, eps, wd,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    p = tl.load(p_ptr + offs, mask=mask, other=0.0)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32) * clip
    m = beta1 * tl.load(m_ptr + offs, mask=mask, other=0.0) + one_minus_beta1 * g
    v = beta2 * tl.load(v_ptr + offs, mask=mask, other=0.0) + one_minus_beta2 * (g * g)
    tl.store(m_ptr + offs, m, mask=mask)
    tl.store(v_ptr + offs, v, mask=mask)
    u = tl.where(mask, _update(p, m, v, inv_bc1, inv_bc2, eps, wd), 0.0)
    tl.store(part_ptr + pid, tl.sum(p * p, axis=0))
    tl.store(part_ptr + programs + pid, tl.sum(u * u, axis=0))


@triton.jit
def _apply_kernel(
    p_ptr,  # [n] fp32 master, updated in place
    m_ptr,  # [n] fp32
    v_ptr,  # [n] fp32
    out_ptr,  # [n] bf16 parameter, written as bf16(master) rounded to nearest even (if HAS_OUT)
    step_ptr,  # [1] fp32: lr * trust ratio of this tensor
    n,
    inv_bc1, inv_bc2, eps, wd,
    HAS_OUT: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    p = tl.load(p_ptr + offs, mask=mask, other=0.0)
    m = tl.load(m_ptr + offs, mask=mask, other=0.0)
    v = tl.load(v_ptr + offs, mask=mask, other=0.0)
    step = tl.load(step_ptr)
    p = p - step * _update(p, m, v, inv_bc1, inv_bc2, eps, wd)
    tl.store(p_ptr + offs, p, mask=mask)
    if HAS_OUT:
        tl.store(out_ptr + offs, _bf16_rne(p), mask=mask)


@triton.jit
def _step_size_kernel(sq_ptr, step_ptr, n, lr, ADAPT: tl.constexpr, BLOCK: tl.constexpr):
    """step[i] = lr * sqrt(p2 / u2) if adapting and both > 0, else lr (fp64; sq is [n, 2])."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    p2 = tl.load(sq_ptr + 2 * offs, mask=mask, other=0.0)
    u2 = tl.load(sq_ptr + 2 * offs + 1, mask=mask, other=0.0)
    ok = (p2 > 0) & (u2 > 0)
    ratio = tl.where(ok, tl.sqrt(p2 / tl.where(ok, u2, 1.0)), 1.0)
    if not ADAPT:
        ratio = tl.where(mask, 1.0, ratio)
    tl.store(step_ptr + offs, ratio * lr, mask=mask)


def _check(t: torch.Tensor, name: str) -> None:
    if t.device.type != "cuda" and not interpreting():
        raise BertperfError(
            f"bertperf.kernels.lamb: `{name}` is a {t.device.type} tensor; CPU tensors need "
            "TRITON_INTERPRET=1 (set before importing triton); use the 'cpu' backend for CPU tensors"
        )
    if not t.is_contiguous():
        raise BertperfError(f"bertperf.kernels.lamb: `{name}` must be contiguous")


def _check_lists(lists: dict[str, list[torch.Tensor]], n: int) -> None:
    for name, xs in lists.items():
        if len(xs) != n:
            raise BertperfError(f"bertperf.kernels.lamb: `{name}` has {len(xs)} tensors, expected {n}")
        for i, t in enumerate(xs):
            _check(t, f"{name}[{i}]")


def _programs(n: int) -> int:
    return max(1, triton.cdiv(n, BLOCK))


# The launchers below have the names and signatures of the torch.ops.bertperf.lamb_* ops
# (csrc/bindings/lamb.cpp), so bertperf.optim.lamb drives both through one class.


def lamb_sq_norms(xs: list[torch.Tensor]) -> torch.Tensor:
    """Per-tensor sums of squares (fp32 or bf16 inputs): float64 [len(xs)] on their device."""
    _check_lists({"xs": xs}, len(xs))
    out = []
    for t in xs:
        n = t.numel()
        part = torch.zeros(_programs(n), dtype=torch.float32, device=t.device)
        if n:
            _sq_norm_kernel[(part.numel(),)](t, part, n, BLOCK=BLOCK)
        out.append(part.double().sum())
    return torch.stack(out) if out else torch.zeros(0, dtype=torch.float64)


def lamb_update_moments(
    masters: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor], beta1: float, beta2: float, clip: float, inv_bc1: float,
    inv_bc2: float, eps: float, weight_decay: float,
) -> torch.Tensor:
    """Stage 1 over each tensor: m, v in place; float64 [n, 2] of (||p||^2, ||u||^2) on the device."""
    _check_lists({"masters": masters, "grads": grads, "exp_avgs": exp_avgs, "exp_avg_sqs": exp_avg_sqs},
                 len(masters))
    rows = []
    for p, g, m, v in zip(masters, grads, exp_avgs, exp_avg_sqs):
        n = p.numel()
        programs = _programs(n)
        part = torch.zeros(2, programs, dtype=torch.float32, device=p.device)
        if n:
            _moments_kernel[(programs,)](
                p, g, m, v, part, n, programs, beta1, beta2, 1.0 - beta1, 1.0 - beta2, clip,
                inv_bc1, inv_bc2, eps, weight_decay, BLOCK=BLOCK,
            )
        rows.append(part.double().sum(dim=1))
    return torch.stack(rows) if rows else torch.zeros(0, 2, dtype=torch.float64)


def lamb_apply_update(
    masters: list[torch.Tensor], exp_avgs: list[torch.Tensor], exp_avg_sqs: list[torch.Tensor],
    params: list[torch.Tensor], step_sizes: torch.Tensor, inv_bc1: float, inv_bc2: float, eps: float,
    weight_decay: float,
) -> None:
    """Stage 2: master -= step_sizes[i] * u; params[i] = bf16(master) unless params is empty."""
    n = len(masters)
    lists = {"masters": masters, "exp_avgs": exp_avgs, "exp_avg_sqs": exp_avg_sqs}
    _check_lists(lists | ({"params": params} if params else {}), n)
    if n == 0:
        return
    steps = step_sizes.to(device=masters[0].device, dtype=torch.float32)
    for i, (p, m, v) in enumerate(zip(masters, exp_avgs, exp_avg_sqs)):
        out = params[i] if params else None
        if p.numel():
            _apply_kernel[(_programs(p.numel()),)](
                p, m, v, out if out is not None else p, steps[i:i + 1], p.numel(), inv_bc1, inv_bc2,
                eps, weight_decay, HAS_OUT=out is not None, BLOCK=BLOCK,
            )


def lamb_step(
    masters: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor], params: list[torch.Tensor], beta1: float, beta2: float,
    clip: float, inv_bc1: float, inv_bc2: float, eps: float, weight_decay: float, lr: float,
    adapt: bool,
) -> None:
    """The fused step: stage 1, step sizes on the device (no host sync), stage 2."""
    sq = lamb_update_moments(masters, grads, exp_avgs, exp_avg_sqs, beta1, beta2, clip, inv_bc1,
                             inv_bc2, eps, weight_decay)
    n = len(masters)
    if n == 0:
        return
    steps = torch.empty(n, dtype=torch.float64, device=sq.device)
    _step_size_kernel[(triton.cdiv(n, 128),)](sq.contiguous(), steps, n, lr, ADAPT=bool(adapt), BLOCK=128)
    lamb_apply_update(masters, exp_avgs, exp_avg_sqs, params, steps, inv_bc1, inv_bc2, eps, weight_decay)
