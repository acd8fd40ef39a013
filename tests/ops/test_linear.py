"""linear: bf16 projections as fp32 GEMMs over the bf16 values (cpu backend, CPUs without AMX)
against float64 over the same bf16 values and against torch's own bf16 linear (oneDNN): the output
and every gradient must be as close to float64 as torch's bf16 result is; fp32 and the other
backends are F.linear itself."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bertperf.ops.linear import bf16_gemm_in_fp32, linear, uses_fp32_gemm
from tests.ops._util import assert_bf16_close, grads, leaf

SHAPES = [(1, 1, 1), (3, 5, 7), (2, 37, 64, 96), (1024, 768, 768)]  # (..., in, out)


def _inputs(shape, bias, seed=0):
    g = torch.Generator().manual_seed(seed)
    *lead, k, n = shape
    x = torch.randn(*lead, k, generator=g).bfloat16()
    w = (torch.randn(n, k, generator=g) * k**-0.5).bfloat16()
    b = torch.randn(n, generator=g).bfloat16() if bias else None
    dy = torch.randn(*lead, n, generator=g).bfloat16()
    return x, w, b, dy


def _run(fn, x, w, b, dy, dtype=None):
    xl, wl, bl = leaf(x, dtype), leaf(w, dtype), leaf(b, dtype)
    y = fn(xl, wl, bl)
    y.backward(dy.to(y.dtype))
    return [y.detach()] + grads(xl, wl, bl)


def test_the_policy():
    x = torch.randn(2, 3).bfloat16()
    w = torch.randn(4, 3).bfloat16()
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: True)()
    assert bf16_gemm_in_fp32() == (not amx)
    assert uses_fp32_gemm(x, w, "cpu") == (not amx)
    assert not uses_fp32_gemm(x, w, "torch")
    assert not uses_fp32_gemm(x.float(), w.float(), "cpu")


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("bias", [True, False])
def test_bf16_linear_is_as_accurate_as_torch_bf16(shape, bias):
    inputs = _inputs(shape, bias)
    ours = _run(lambda x, w, b: linear(x, w, b, "cpu"), *inputs)
    ref = _run(lambda x, w, b: F.linear(x, w, b), *inputs, dtype=torch.float64)
    theirs = _run(lambda x, w, b: F.linear(x, w, b), *inputs)
    for name, o, r, t in zip(["y", "dx", "dw", "db"], ours, ref, theirs):
        if r is None:
            assert o is None
            continue
        assert_bf16_close(o, r, t, f"{shape} {name}")


def test_fp32_and_torch_backend_are_f_linear():
    x, w, b, dy = _inputs((3, 5, 7), True)
    for xs, ws, bs, be in ((x.float(), w.float(), b.float(), "cpu"), (x, w, b, "torch")):
        ours = _run(lambda a, c, d: linear(a, c, d, be), xs, ws, bs, dy)
        ref = _run(lambda a, c, d: F.linear(a, c, d), xs, ws, bs, dy)
        for o, r in zip(ours, ref):
            assert torch.equal(o, r)
