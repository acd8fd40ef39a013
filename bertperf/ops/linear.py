"""linear: x W^T + b for the model's projections, with the bf16 GEMM that is fastest on the CPU.

A bf16 GEMM multiplies bf16 values and accumulates in fp32. The product of two bf16 values
(8-bit significands) is exact in fp32 (24 bits), so an fp32 GEMM over the same bf16 values, its
result rounded to bf16, is the same arithmetic; only the order of the fp32 additions may differ.
On a CPU with AMX, oneDNN's bf16 GEMM (what F.linear runs for bf16) is several times faster than
fp32. Without AMX it uses AVX512-BF16 dot products and reaches half the fp32 GEMM rate (measured
here by `bench/bench_e2e.py`'s GEMM probe: 168 against 335 GFLOP/s). There the `cpu` kernel backend runs
bf16 projections as fp32 GEMMs over the upcast bf16 values and rounds the result to bf16:
weights, activations and gradients stay bf16 in memory (the README's e2e table has the bf16
training speed this gives).

`linear(x, weight, bias, backend)`: backend is the model's resolved kernel backend; only "cpu"
with bf16 x and weight on a CPU without AMX takes the fp32 GEMM, everything else is F.linear.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor


@functools.cache
def bf16_gemm_in_fp32() -> bool:
    """True when this CPU lacks AMX, so fp32 GEMMs over bf16 values beat oneDNN's bf16 GEMM."""
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return amx is not None and not amx()


def uses_fp32_gemm(x: Tensor, weight: Tensor, backend: str) -> bool:
    return (backend == "cpu" and x.dtype == torch.bfloat16 and weight.dtype == torch.bfloat16
            and x.device.type == "cpu" and bf16_gemm_in_fp32())


class _Fp32GemmLinear(torch.autograd.Function):
    """y = bf16(x W^T + b) with the GEMMs in fp32 over the bf16 values; the backward likewise
    (dx = bf16(dy W), dW = bf16(dy^T x), db = bf16(sum dy), sums in fp32). Saves x and W as they
    are (bf16), as F.linear does."""

    @staticmethod
    def forward(ctx, x, weight, bias):  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        ctx.bias_dtype = None if bias is None else bias.dtype
        x2 = x.reshape(-1, x.shape[-1]).float()
        y = torch.mm(x2, weight.float().t()) if bias is None else torch.addmm(bias.float(), x2, weight.float().t())
        return y.to(x.dtype).view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, dy):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        g = dy.reshape(-1, dy.shape[-1]).float()
        dx = torch.mm(g, weight.float()).to(x.dtype).view_as(x) if ctx.needs_input_grad[0] else None
        dw = torch.mm(g.t(), x.reshape(-1, x.shape[-1]).float()).to(weight.dtype) if ctx.needs_input_grad[1] else None
        db = g.sum(0).to(ctx.bias_dtype) if ctx.bias_dtype is not None and ctx.needs_input_grad[2] else None
        return dx, dw, db


def linear(x: Tensor, weight: Tensor, bias: Tensor | None, backend: str) -> Tensor:
    """x [..., in] @ weight [out, in]^T (+ bias [out]) -> [..., out]; see the module docstring."""
    if uses_fp32_gemm(x, weight, backend):
        return _Fp32GemmLinear.apply(x, weight, bias)
    return F.linear(x, weight, bias)
