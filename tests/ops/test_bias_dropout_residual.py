"""bias_dropout_residual on every backend that runs here against the reference (same seed, same
hash mask): outputs, dx, dresidual, dbias, fp32 and bf16, with and without dropout; the mask's
statistics and seeding; fp64 gradcheck of the CPU kernels; every CPU ISA variant."""
from __future__ import annotations

import pytest
import torch

from bertperf.ops import _dropout
from bertperf.ops.bias_dropout_residual import (BiasDropoutResidual, bias_dropout_residual,
                                                bias_dropout_residual_ref)
from bertperf.utils.errors import BertperfError
from tests.ops._util import assert_matches, at_each_cpu_isa, grads, leaf

CPU_SHAPES = [(1, 1), (3, 7), (5, 13), (2, 768), (4, 1024), (3, 3072), (2, 3, 768), (1, 4099)]
TINY_SHAPES = [(1, 1), (3, 7), (17, 33), (2, 300)]
CASES = ([("cpu", s) for s in CPU_SHAPES] + [("triton", s) for s in TINY_SHAPES]
         + [("torch", s) for s in TINY_SHAPES])
SEED = (0x1234_5678 << 32) | 0x9ABC_DEF0


def _inputs(shape, dtype, with_bias, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g).to(dtype)
    res = torch.randn(shape, generator=g).to(dtype)
    bias = torch.randn(shape[-1], generator=g).to(dtype) if with_bias else None
    dy = torch.randn(shape, generator=g).to(dtype)
    return x, bias, res, dy


def _run(fn, x, bias, res, dy, dtype=None):
    x, bias, res = leaf(x, dtype), leaf(bias, dtype), leaf(res, dtype)
    y = fn(x, bias, res)
    y.backward(dy.to(y.dtype))
    return [y.detach()] + grads(x, bias, res)


@pytest.mark.parametrize("backend,shape", CASES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("p", [0.0, 0.1, 0.5])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
def test_bias_dropout_residual_matches_reference(backend, shape, dtype, p, with_bias):
    inputs = _inputs(shape, dtype, with_bias)
    ours = _run(lambda x, b, r: bias_dropout_residual(x, b, r, p, seed=SEED, backend=backend), *inputs)
    ref = _run(lambda x, b, r: bias_dropout_residual_ref(x, b, r, p, seed=SEED), *inputs, dtype=torch.float64)
    lowp = _run(lambda x, b, r: bias_dropout_residual_ref(x, b, r, p, seed=SEED, upcast=False), *inputs)
    for name, o, r, t in zip(["y", "dx", "dbias", "dresidual"], ours, ref, lowp):
        assert_matches(o, r, t, dtype, f"{backend} p={p} {name}", grad=name == "dbias")


def test_dropout_mask_statistics_and_seeding():
    n, p = 1 << 20, 0.1
    x, r = torch.ones(1024, n // 1024), torch.zeros(1024, n // 1024)
    y = bias_dropout_residual(x, None, r, p, seed=7, backend="cpu")
    dropped = (y == 0).float().mean().item()
    sigma = (p * (1 - p) / n) ** 0.5
    assert abs(dropped - p) < 5 * sigma, f"dropped fraction {dropped} vs p={p}"
    torch.testing.assert_close(y[y != 0], torch.full_like(y[y != 0], _dropout.inv_keep(p)))
    y2 = bias_dropout_residual(x, None, r, p, seed=8, backend="cpu")
    assert ((y == 0) != (y2 == 0)).float().mean() > 0.1, "different seeds must give different masks"
    torch.manual_seed(3)
    a = bias_dropout_residual(x, None, r, p, backend="cpu")
    torch.manual_seed(3)
    b = bias_dropout_residual(x, None, r, p, backend="cpu")
    assert torch.equal(a, b), "torch.manual_seed must reproduce the drawn seed"
    assert not torch.equal(a, bias_dropout_residual(x, None, r, p, backend="cpu")), "each call draws a new seed"


def test_eval_mode_is_a_plain_add():
    m = BiasDropoutResidual(0.5, kernel_backend="cpu").eval()
    x, b, r = torch.randn(4, 96), torch.randn(96), torch.randn(4, 96)
    torch.testing.assert_close(m(x, b, r), x + b + r, atol=1e-6, rtol=1e-6)
    with pytest.raises(BertperfError, match="dropout probability"):
        BiasDropoutResidual(1.0)


@pytest.mark.parametrize("p", [0.0, 0.3])
def test_bias_dropout_residual_cpu_gradcheck_fp64(p):
    x, bias, res, _ = _inputs((3, 11), torch.float64, True)
    fn = lambda a, b, r: bias_dropout_residual(a, b, r, p, seed=SEED, backend="cpu")  # noqa: E731
    assert torch.autograd.gradcheck(fn, [leaf(x), leaf(bias), leaf(res)])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_bias_dropout_residual_cpu_isa_variants_agree(dtype):
    inputs = _inputs((4, 1031), dtype, True)
    fn = lambda x, b, r: bias_dropout_residual(x, b, r, 0.2, seed=SEED, backend="cpu")  # noqa: E731
    results = at_each_cpu_isa(lambda: _run(fn, *inputs))
    ref = _run(lambda x, b, r: bias_dropout_residual_ref(x, b, r, 0.2, seed=SEED), *inputs, dtype=torch.float64)
    lowp = _run(lambda x, b, r: bias_dropout_residual_ref(x, b, r, 0.2, seed=SEED, upcast=False), *inputs)
    for level, outs in results.items():
        for o, r, t in zip(outs, ref, lowp):
            assert_matches(o, r, t, dtype, f"isa level {level}", grad=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_p0_dbias_for_contiguous_and_expanded_gradients(dtype):
    """p = 0: dbias is the column sum of dy both for a contiguous dy and for the expanded
    gradient of y.sum(); dx and dresidual are the same tensor (dy, no copy)."""
    g = torch.Generator().manual_seed(3)
    x, r = (torch.randn(3, 5, 96, generator=g).to(dtype) for _ in range(2))
    bias = torch.randn(96, generator=g).to(dtype)
    dy = torch.randn(3, 5, 96, generator=g).to(dtype)
    for how in ("contiguous", "expanded"):
        xl, bl, rl = (t.clone().requires_grad_() for t in (x, bias, r))
        y = bias_dropout_residual(xl, bl, rl, 0.0, backend="cpu")
        if how == "contiguous":
            y.backward(dy)
            want = dy.double().sum((0, 1))
        else:
            y.sum().backward()
            want = torch.full((96,), 15.0, dtype=torch.float64)
        # fp32: the suite's gradient tolerance; bf16: one bf16 ulp of the largest sum (one rounding)
        tol = 1e-4 if dtype == torch.float32 else 2.0**-7 * want.abs().max().item()
        assert (bl.grad.double() - want).abs().max().item() <= tol, how
        assert torch.equal(xl.grad, rl.grad), how
