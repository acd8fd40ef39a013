"""Attention softmax (scale + additive mask + dropout) on every backend that runs here against the
reference (same seed, same hash mask): outputs and dx, fp32 and bf16, padding/causal/no mask,
BERT's [8, 12, 128, 128] scores; fp64 gradcheck of the CPU kernels; every CPU ISA variant."""
from __future__ import annotations

import pytest
import torch

from bertperf.ops.softmax import AttentionSoftmax, softmax, softmax_ref
from bertperf.utils.errors import BertperfError
from tests.ops._util import assert_matches, at_each_cpu_isa, grads, leaf

# (scores shape, mask kind)
CPU_SHAPES = [(1, 1, 1, 1), (2, 3, 5, 7), (1, 2, 3, 13), (2, 12, 16, 128), (1, 1, 2, 1024),
              (3, 3072), (1, 1, 1, 4099)]
TINY_SHAPES = [(1, 1, 1, 1), (2, 3, 5, 7), (1, 2, 4, 33)]
KINDS = ("padding", "causal", "none")
BERT = (8, 12, 128, 128)  # BERT-base scores: with its real (padding) mask only, it is the slow case
CASES = ([("cpu", s, k) for s in CPU_SHAPES for k in KINDS] + [("cpu", BERT, "padding")]
         + [(b, s, k) for b in ("triton", "torch") for s in TINY_SHAPES for k in KINDS])
SEED = 20240607


def _mask(shape, kind, dtype, g):
    sk = shape[-1]
    if kind == "none":
        return None
    if kind == "padding":  # HF extended mask [B, 1, 1, Sk]: 0 keep, dtype-min for padding
        b = shape[0] if len(shape) == 4 else 1
        lengths = torch.randint(1, sk + 1, (b,), generator=g)
        keep = torch.arange(sk)[None, :] < lengths[:, None]
        m = torch.where(keep, torch.zeros((), dtype=dtype), torch.tensor(torch.finfo(dtype).min, dtype=dtype))
        return m[:, None, None, :] if len(shape) == 4 else m
    sq = shape[-2]  # causal [Sq, Sk]
    return torch.triu(torch.full((sq, sk), -1e4), diagonal=1).to(dtype)


def _inputs(shape, dtype, kind, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g) * 4).to(dtype)
    dy = torch.randn(shape, generator=g).to(dtype)
    return x, _mask(shape, kind, dtype, g), dy


def _run(fn, x, mask, dy, dtype=None):
    x = leaf(x, dtype)
    m = mask.to(dtype) if (mask is not None and dtype is not None) else mask
    y = fn(x, m)
    y.backward(dy.to(y.dtype))
    return [y.detach()] + grads(x)


@pytest.mark.parametrize("backend,shape,kind", CASES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("p", [0.0, 0.1])
def test_softmax_matches_reference(backend, shape, kind, dtype, p):
    inputs = _inputs(shape, dtype, kind)
    scale = 0.125
    ours = _run(lambda x, m: softmax(x, m, scale, p, seed=SEED, backend=backend), *inputs)
    ref = _run(lambda x, m: softmax_ref(x, m, scale, p, seed=SEED), *inputs, dtype=torch.float64)
    lowp = _run(lambda x, m: softmax_ref(x, m, scale, p, seed=SEED, upcast=False), *inputs)
    for name, o, r, t in zip(["y", "dx"], ours, ref, lowp):
        assert_matches(o, r, t, dtype, f"{backend} p={p} {kind} {name}")


@pytest.mark.parametrize("p", [0.0, 0.2])
def test_softmax_cpu_gradcheck_fp64(p):
    x, mask, _ = _inputs((2, 2, 3, 9), torch.float64, "padding")
    fn = lambda a: softmax(a, mask, 0.5, p, seed=SEED, backend="cpu")  # noqa: E731
    assert torch.autograd.gradcheck(fn, [leaf(x)])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_softmax_cpu_isa_variants_agree(dtype):
    inputs = _inputs((2, 3, 4, 131), dtype, "padding")
    fn = lambda x, m: softmax(x, m, 0.125, 0.1, seed=SEED, backend="cpu")  # noqa: E731
    results = at_each_cpu_isa(lambda: _run(fn, *inputs))
    ref = _run(lambda x, m: softmax_ref(x, m, 0.125, 0.1, seed=SEED), *inputs, dtype=torch.float64)
    lowp = _run(lambda x, m: softmax_ref(x, m, 0.125, 0.1, seed=SEED, upcast=False), *inputs)
    for level, outs in results.items():
        for o, r, t in zip(outs, ref, lowp):
            assert_matches(o, r, t, dtype, f"isa level {level}")


def test_softmax_module_eval_and_errors():
    m = AttentionSoftmax(0.5, kernel_backend="cpu").eval()
    x = torch.randn(2, 3, 4, 8)
    torch.testing.assert_close(m(x, None, 0.5), torch.softmax(x * 0.5, -1), atol=1e-6, rtol=1e-5)
    with pytest.raises(RuntimeError, match="does not broadcast"):
        softmax(x, torch.zeros(2, 1, 1, 7), backend="cpu")
    with pytest.raises(BertperfError, match="constant"):
        softmax(x, torch.zeros(2, 1, 1, 8, requires_grad=True), backend="cpu")
