"""The bertperf ops inside torch.compile graphs (fake implementations of bertperf/ops/_fake.py).

1. `torch.library.opcheck` (fake-tensor test only): each op's fake implementation gives the
   shapes, dtypes and strides the real C++ kernel returns, on fp32 and bf16 inputs.
2. A compiled function calling each op (forward + backward, backend "aot_eager": it traces with
   FakeTensors through AOTAutograd like inductor does, without inductor's slow C++ codegen)
   gives the eager reference result. Reference: the same function run eagerly on the same
   kernels (fp32, bitwise up to 1e-6) and the pure-torch composite (FP32 tolerances).
"""
from __future__ import annotations

import pytest
import torch

from bertperf.ops import _fake
from bertperf.ops.backend import kernels
from bertperf.ops.bias_dropout_residual import bias_dropout_residual, bias_dropout_residual_ref
from bertperf.ops.bias_gelu import bias_gelu, bias_gelu_ref
from bertperf.ops.layer_norm import layer_norm, layer_norm_ref
from bertperf.ops.softmax import softmax, softmax_ref
from tests.ops._util import FP32_GRAD_TOL, FP32_TOL

K = kernels("cpu", "layer_norm")  # loads the cpu kernels and registers the fakes


def test_every_op_has_a_fake():
    names = sorted(n.split("::")[1] for n in torch._C._dispatch_get_all_op_names()
                   if n.startswith("bertperf::")
                   and n not in ("bertperf::cpu_isa", "bertperf::fast_math_eval",  # test hooks
                                 "bertperf::attention_gemm_available"))  # a capability query
    assert names and set(names) <= set(_fake.register()), names


def _opcheck_cases(dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 24, generator=g).to(dtype)
    r = torch.randn(3, 5, 24, generator=g).to(dtype)
    b = torch.randn(24, generator=g)
    gamma, beta = torch.randn(24, generator=g), torch.randn(24, generator=g)
    s = torch.randn(2, 3, 7, 7, generator=g).to(dtype)
    m = torch.zeros(2, 1, 1, 7)
    y, mean, rstd = K.layer_norm_fwd(x, b, r, gamma, beta, 1e-5)
    _, probs = K.softmax_fwd(s, m, 0.5, 0.1, 3)
    cases = []
    if dtype == torch.float32:  # the attention GEMMs are fp32 only
        qkv = torch.randn(2, 7, 18, generator=g)
        ctx = torch.randn(2, 7, 6, generator=g)
        cases = [
            (K.attention_scores, (qkv, 3)),
            (K.attention_context, (s.float(), qkv, 3)),
            (K.attention_context_bwd, (ctx, s.float(), qkv, 3)),
            (K.attention_scores_bwd, (s.float(), qkv, torch.zeros_like(qkv), 3)),
        ]
    logits = torch.randn(4, 9, generator=g).to(dtype)
    labels = torch.randint(0, 9, (4,), generator=g)
    cases += [(K.cross_entropy_fwd, (logits, torch.randn(9, generator=g), labels, 0.25)),
              (K.cross_entropy_fwd, (logits, None, labels, 0.25))]
    return cases + [
        (K.layer_norm_fwd, (x, b, r, gamma, beta, 1e-5)),
        (K.layer_norm_fwd, (x, None, None, gamma, beta, 1e-5)),
        (K.layer_norm_bwd, (y, x, b, r, gamma, mean, rstd)),
        (K.layer_norm_bwd, (r, x, b, r, gamma, mean, rstd, y, beta)),
        (K.bias_gelu_fwd, (x, b, "none")),
        (K.bias_gelu_bwd, (r, x, b, "tanh")),
        (K.bias_gelu_bwd, (r, x, None, "none")),
        (K.bias_dropout_residual_fwd, (x, b, r, 0.1, 7)),
        (K.bias_dropout_residual_bwd, (x, b, 0.1, 7)),
        (K.softmax_fwd, (s, m, 0.5, 0.0, 0)),
        (K.softmax_fwd, (s, None, 0.5, 0.1, 3)),
        (K.softmax_bwd, (s, probs, 0.5, 0.1, 3)),
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fake_matches_real_kernels(dtype):
    for op, args in _opcheck_cases(dtype):
        torch.library.opcheck(op, args, test_utils=("test_faketensor",))


def test_fake_lamb_shapes():
    xs = [torch.randn(5), torch.randn(2, 3)]
    real = torch.ops.bertperf.lamb_sq_norms(xs)
    torch.library.opcheck(torch.ops.bertperf.lamb_sq_norms, (xs,), test_utils=("test_faketensor",))
    assert real.shape == (2,) and real.dtype == torch.float64


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 9, 40, generator=g, requires_grad=True)
    r = torch.randn(2, 9, 40, generator=g, requires_grad=True)
    b = torch.randn(40, generator=g, requires_grad=True)
    gamma = (1 + 0.1 * torch.randn(40, generator=g)).requires_grad_(True)
    beta = (0.1 * torch.randn(40, generator=g)).requires_grad_(True)
    s = torch.randn(2, 3, 9, 9, generator=g, requires_grad=True)
    m = torch.zeros(2, 1, 1, 9)
    m[1, ..., 6:] = -1e4
    return x, r, b, gamma, beta, s, m


def _chain(backend: str):
    """One function using every op (p = 0: no seed is drawn, so no graph break)."""
    def fn(x, r, b, gamma, beta, s, m):
        h = bias_gelu(x, b, "none", backend)
        h = bias_dropout_residual(h, b, r, 0.0, True, None, backend)
        h = layer_norm(h, gamma, beta, b, r, 1e-5, backend)
        a = softmax(s, m, 0.7, 0.0, True, None, backend)
        return h.square().sum() + (a * s.detach()).sum()
    return fn


def _ref(x, r, b, gamma, beta, s, m):
    h = bias_gelu_ref(x, b, "none")
    h = bias_dropout_residual_ref(h, b, r)
    h = layer_norm_ref(h, gamma, beta, b, r, 1e-5)
    a = softmax_ref(s, m, 0.7)
    return h.square().sum() + (a * s.detach()).sum()


def _value_and_grads(fn, inputs):
    leaves = [t.detach().clone().requires_grad_(t.requires_grad) for t in inputs]
    out = fn(*leaves)
    out.backward()
    return out.detach(), [t.grad for t in leaves if t.requires_grad]


def test_compiled_ops_give_the_reference_result():
    torch._dynamo.reset()
    inputs = _inputs()
    compiled = torch.compile(_chain("cpu"), backend="aot_eager", fullgraph=True)
    out_c, g_c = _value_and_grads(compiled, inputs)
    out_e, g_e = _value_and_grads(_chain("cpu"), inputs)
    out_r, g_r = _value_and_grads(_ref, inputs)
    torch.testing.assert_close(out_c, out_e, rtol=1e-6, atol=0)
    torch.testing.assert_close(out_c, out_r, **FP32_TOL)
    for gc, ge, gr in zip(g_c, g_e, g_r, strict=True):
        torch.testing.assert_close(gc, ge, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(gc, gr, **FP32_GRAD_TOL)


def test_compiled_dropout_ops_run_with_an_explicit_seed():
    """With dropout on and the seed passed in, the compiled graph reproduces eager exactly."""
    torch._dynamo.reset()
    x, r, b, *_ = _inputs(1)

    def fn(x, b, r):
        return bias_dropout_residual(x, b, r, 0.25, True, 1234, "cpu").square().sum()

    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    out_c, g_c = _value_and_grads(compiled, (x, b, r))
    out_e, g_e = _value_and_grads(fn, (x, b, r))
    torch.testing.assert_close(out_c, out_e, rtol=0, atol=0)
    for gc, ge in zip(g_c, g_e, strict=True):
        torch.testing.assert_close(gc, ge, rtol=0, atol=0)
