"""bias_gelu (erf and tanh forms) on every backend that runs here against the fp32 reference:
outputs, dx and dbias, awkward and BERT shapes (3072 = BERT-base intermediate), fp32 and bf16;
fp64 gradcheck of the CPU kernels; every compiled CPU ISA variant; input errors."""
from __future__ import annotations

import pytest
import torch

from bertperf.ops.bias_gelu import BiasGelu, bias_gelu, bias_gelu_ref
from bertperf.utils.errors import BertperfError
from tests.ops._util import assert_matches, at_each_cpu_isa, grads, leaf

CPU_SHAPES = [(1, 1), (3, 7), (5, 13), (2, 768), (4, 1024), (3, 3072), (2, 3, 3072), (1, 4099)]
TINY_SHAPES = [(1, 1), (3, 7), (17, 33), (2, 300)]
CASES = ([("cpu", s) for s in CPU_SHAPES] + [("triton", s) for s in TINY_SHAPES]
         + [("torch", s) for s in TINY_SHAPES])


def _inputs(shape, dtype, with_bias, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g) * 3).to(dtype)  # covers the tails of erf / tanh
    bias = torch.randn(shape[-1], generator=g).to(dtype) if with_bias else None
    dy = torch.randn(shape, generator=g).to(dtype)
    return x, bias, dy


def _run(fn, x, bias, dy, dtype=None):
    x, bias = leaf(x, dtype), leaf(bias, dtype)
    y = fn(x, bias)
    y.backward(dy.to(y.dtype))
    return [y.detach()] + grads(x, bias)


@pytest.mark.parametrize("backend,shape", CASES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
def test_bias_gelu_matches_reference(backend, shape, dtype, approximate, with_bias):
    inputs = _inputs(shape, dtype, with_bias)
    ours = _run(lambda x, b: bias_gelu(x, b, approximate, backend=backend), *inputs)
    ref = _run(lambda x, b: bias_gelu_ref(x, b, approximate), *inputs, dtype=torch.float64)
    lowp = _run(lambda x, b: bias_gelu_ref(x, b, approximate, upcast=False), *inputs)
    for name, o, r, t in zip(["y", "dx", "dbias"], ours, ref, lowp):
        assert_matches(o, r, t, dtype, f"{backend} {approximate} {name}", grad=name == "dbias")


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_bias_gelu_cpu_gradcheck_fp64(approximate):
    x, bias, _ = _inputs((3, 11), torch.float64, True)
    assert torch.autograd.gradcheck(lambda a, b: bias_gelu(a, b, approximate, backend="cpu"), [leaf(x), leaf(bias)])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_bias_gelu_cpu_isa_variants_agree(dtype, approximate):
    inputs = _inputs((4, 1031), dtype, True)
    results = at_each_cpu_isa(lambda: _run(lambda x, b: bias_gelu(x, b, approximate, backend="cpu"), *inputs))
    ref = _run(lambda x, b: bias_gelu_ref(x, b, approximate), *inputs, dtype=torch.float64)
    lowp = _run(lambda x, b: bias_gelu_ref(x, b, approximate, upcast=False), *inputs)
    for level, outs in results.items():
        for o, r, t in zip(outs, ref, lowp):
            assert_matches(o, r, t, dtype, f"isa level {level}", grad=True)


def test_bias_gelu_module_and_errors():
    m = BiasGelu("tanh", kernel_backend="cpu")
    x, b = torch.randn(2, 8), torch.randn(8)
    torch.testing.assert_close(m(x, b), torch.nn.functional.gelu(x + b, approximate="tanh"), atol=1e-5, rtol=1e-5)
    with pytest.raises(BertperfError, match="approximate must be"):
        bias_gelu(x, b, "sigmoid")
    with pytest.raises(RuntimeError, match="`bias` must have shape \\[8\\]"):
        bias_gelu(x, torch.randn(9), backend="cpu")
