"""layer_norm on every backend that runs here against the fp32 reference: outputs and gradients
of x, residual, bias, gamma and beta, awkward and BERT shapes, fp32 and bf16; fp64 gradcheck of
the CPU kernels; every compiled CPU ISA variant; input errors."""
from __future__ import annotations

import pytest
import torch

from bertperf.ops.layer_norm import FusedLayerNorm, layer_norm, layer_norm_ref
from tests.ops._util import assert_matches, grads, leaf

CPU_SHAPES = [(1, 1), (3, 7), (5, 13), (2, 768), (4, 1024), (3, 3072), (2, 3, 768), (1, 4099)]
TINY_SHAPES = [(1, 1), (3, 7), (2, 33), (2, 768)]  # Triton interpreter: tiny only
CASES = (
    [("cpu", s) for s in CPU_SHAPES]
    + [("triton", s) for s in TINY_SHAPES]
    # Not (1, 1) for torch: with one column the variance is 0 and rstd = 1/sqrt(eps) = 1e6
    # amplifies torch's own fp32 rounding of x - mean (its dgamma comes out ~0.1, not 0).
    + [("torch", s) for s in TINY_SHAPES[1:]]
)
EPS = 1e-12


def _inputs(shape, dtype, with_bias, with_res, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = shape[-1]
    x = (torch.randn(shape, generator=g) * 2 + 0.5).to(dtype)
    res = torch.randn(shape, generator=g).to(dtype) if with_res else None
    bias = (torch.randn(h, generator=g) * 0.1).to(dtype) if with_bias else None
    gamma = (1 + 0.1 * torch.randn(h, generator=g)).to(dtype)
    beta = (0.1 * torch.randn(h, generator=g)).to(dtype)
    dy = torch.randn(shape, generator=g).to(dtype)
    return x, res, bias, gamma, beta, dy


def _run(fn, x, res, bias, gamma, beta, dy, dtype=None):
    x, res, bias, gamma, beta = (leaf(t, dtype) for t in (x, res, bias, gamma, beta))
    y = fn(x, gamma, beta, bias, res)
    y.backward(dy.to(y.dtype))
    return [y.detach()] + grads(x, res, bias, gamma, beta)


@pytest.mark.parametrize("backend,shape", CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("with_bias,with_res", [(True, True), (False, False), (True, False)],
                         ids=["bias+res", "plain", "bias"])
def test_layer_norm_matches_reference(backend, shape, dtype, with_bias, with_res):
    inputs = _inputs(shape, dtype, with_bias, with_res)
    ours = _run(lambda *a: layer_norm(*a, eps=EPS, backend=backend), *inputs)
    ref = _run(lambda *a: layer_norm_ref(*a, eps=EPS, upcast=True), *inputs, dtype=torch.float64)
    lowp = _run(lambda *a: layer_norm_ref(*a, eps=EPS, upcast=False), *inputs)
    names = ["y", "dx", "dresidual", "dbias", "dgamma", "dbeta"]
    for name, o, r, t in zip(names, ours, ref, lowp):
        assert_matches(o, r, t, dtype, f"{backend} {name}", grad=name in ("dbias", "dgamma", "dbeta"))


@pytest.mark.parametrize("shape", [(3, 7), (2, 3, 16), (1, 1)])
def test_layer_norm_cpu_gradcheck_fp64(shape):
    x, res, bias, gamma, beta, _ = _inputs(shape, torch.float64, True, True)
    args = [leaf(t) for t in (x, gamma, beta, bias, res)]
    assert torch.autograd.gradcheck(lambda *a: layer_norm(*a, eps=1e-5, backend="cpu"), args)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_layer_norm_cpu_isa_variants_agree(dtype):
    isa = torch.ops.bertperf.cpu_isa
    inputs = _inputs((6, 771), dtype, True, True)
    best = isa(0)
    try:
        results = {}
        for level in (1, 3, 4):
            used = isa(level)
            results[used] = _run(lambda *a: layer_norm(*a, eps=EPS, backend="cpu"), *inputs)
    finally:
        isa(best)
    assert 1 in results, "the baseline variant must always be selectable"
    ref = _run(lambda *a: layer_norm_ref(*a, eps=EPS), *inputs, dtype=torch.float64)
    lowp = _run(lambda *a: layer_norm_ref(*a, eps=EPS, upcast=False), *inputs)
    for level, outs in results.items():
        for o, r, t in zip(outs, ref, lowp):
            assert_matches(o, r, t, dtype, f"isa level {level}", grad=True)


def test_layer_norm_module_matches_nn_layernorm():
    torch.manual_seed(0)
    ln = torch.nn.LayerNorm(96, eps=1e-12)
    with torch.no_grad():
        ln.weight.normal_()
        ln.bias.normal_()
    fused = FusedLayerNorm(96, eps=1e-12, kernel_backend="cpu")
    fused.load_state_dict(ln.state_dict())
    x, r = torch.randn(4, 96), torch.randn(4, 96)
    torch.testing.assert_close(fused(x, residual=r), ln(x + r), atol=1e-5, rtol=1e-5)
    assert "kernel_backend='cpu'" in repr(fused)


def test_layer_norm_input_errors_name_the_argument():
    x = torch.randn(2, 8)
    gamma, beta = torch.ones(8), torch.zeros(8)
    with pytest.raises(RuntimeError, match="`gamma` must have shape \\[8\\]"):
        layer_norm(x, torch.ones(7), beta, backend="cpu")
    with pytest.raises(RuntimeError, match="`residual` has shape"):
        layer_norm(x, gamma, beta, residual=torch.randn(2, 9), backend="cpu")
    with pytest.raises(RuntimeError, match="must be float32, bfloat16 or float64"):
        layer_norm(x.half(), gamma, beta, backend="cpu")


def _fallback_params(h, dtype, kind):
    """gamma/beta for which y no longer determines xhat in some column: a zero gamma, or a beta
    more than 16x its gamma (the CPU backward must then recompute x + bias + residual)."""
    g = torch.Generator().manual_seed(1)
    gamma = 1 + 0.1 * torch.randn(h, generator=g)
    beta = 0.1 * torch.randn(h, generator=g)
    if kind == "zero-gamma":
        gamma[h // 2] = 0.0
    else:
        gamma[h // 2] = 1e-3
        beta[h // 2] = 0.5
    return gamma.to(dtype), beta.to(dtype)


@pytest.mark.parametrize("shape", [(3, 7), (4, 768), (2, 3, 771)], ids=str)
@pytest.mark.parametrize("kind", ["zero-gamma", "big-beta"])
def test_layer_norm_cpu_backward_falls_back_when_gamma_not_invertible(shape, kind):
    """fp32 CPU backward: xhat from y when every column is invertible, else recomputed from
    x + bias + residual; both paths against the fp64 reference, zero gamma included."""
    x, res, bias, _, _, dy = _inputs(shape, torch.float32, True, True)
    gamma, beta = _fallback_params(shape[-1], torch.float32, kind)
    ours = _run(lambda *a: layer_norm(*a, eps=EPS, backend="cpu"), x, res, bias, gamma, beta, dy)
    ref = _run(lambda *a: layer_norm_ref(*a, eps=EPS, upcast=True), x, res, bias, gamma, beta, dy,
               dtype=torch.float64)
    names = ["y", "dx", "dresidual", "dbias", "dgamma", "dbeta"]
    for name, o, r in zip(names, ours, ref):
        assert torch.isfinite(o).all(), f"{kind} {name}: non-finite values"
        assert_matches(o, r, None, torch.float32, f"{kind} {name}",
                       grad=name in ("dbias", "dgamma", "dbeta"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("with_bias,with_res", [(True, True), (False, False), (False, True)],
                         ids=["bias+res", "plain", "res"])
def test_layer_norm_cpu_backward_from_output_matches_recompute(dtype, with_bias, with_res):
    """The op-level contract: passing (y, beta) changes how xhat is obtained, not the result."""
    x, res, bias, gamma, beta, dy = _inputs((5, 771), dtype, with_bias, with_res)
    ops = torch.ops.bertperf
    y, mean, rstd = ops.layer_norm_fwd(x, bias, res, gamma, beta, EPS)
    recompute = ops.layer_norm_bwd(dy, x, bias, res, gamma, mean, rstd)
    from_y = ops.layer_norm_bwd(dy, x, bias, res, gamma, mean, rstd, y, beta)
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 1e-12, "rtol": 1e-12}
    for a, b in zip(recompute, from_y):
        if a is None:
            assert b is None
            continue
        torch.testing.assert_close(b, a, **tol)
    with pytest.raises(RuntimeError, match="pass both `y` and `beta`"):
        ops.layer_norm_bwd(dy, x, bias, res, gamma, mean, rstd, y, None)


@pytest.mark.parametrize("kind", ["zero-gamma", "big-beta"])
def test_layer_norm_cpu_gradcheck_fp64_fallback(kind):
    x, res, bias, _, _, _ = _inputs((3, 7), torch.float64, True, True)
    gamma, beta = _fallback_params(7, torch.float64, kind)
    args = [leaf(t) for t in (x, gamma, beta, bias, res)]
    assert torch.autograd.gradcheck(lambda *a: layer_norm(*a, eps=1e-5, backend="cpu"), args)
