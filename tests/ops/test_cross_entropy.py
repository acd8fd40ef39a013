"""Fused cross-entropy (bias add, mean softmax cross-entropy, accuracy count, logits gradient) on
every backend that runs here against the pure-torch reference in float64: the loss, the biased
logits, the count, and the gradients of the logits and the bias (with and without a gradient
flowing into the returned logits too, and an incoming loss gradient other than 1); fp32 and bf16;
shapes from one class to BERT's 30522-word vocabulary; fp64 gradcheck of the CPU kernel."""
from __future__ import annotations

import pytest
import torch

from bertperf.ops.cross_entropy import cross_entropy, cross_entropy_ref
from bertperf.utils.errors import BertperfError
from tests.ops._util import FP32_GRAD_TOL, FP32_TOL, assert_bf16_close, grads, leaf

CPU_SHAPES = [(1, 1), (3, 7), (5, 131), (20, 3072), (160, 30522)]
TINY_SHAPES = [(1, 1), (3, 7), (4, 33)]
CASES = [("cpu", s) for s in CPU_SHAPES] + [(b, s) for b in ("triton", "torch") for s in TINY_SHAPES]


def _inputs(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    m, v = shape
    x = (torch.randn(shape, generator=g) * 3).to(dtype)
    bias = torch.randn(v, generator=g)
    labels = torch.randint(0, v, (m,), generator=g)
    labels[0] = x[0].float().add(bias).argmax()  # at least one correct row
    dy = torch.randn(shape, generator=g).to(dtype)
    return x, bias, labels, dy


def _run(fn, x, bias, labels, dy, use_y, dtype=None):
    """loss * 3 (+ <y, dy> when use_y) backpropagated: returns loss, count, y, dx, dbias."""
    xl, bl = leaf(x, dtype), leaf(bias, dtype if dtype == torch.float64 else None)
    loss, correct, y = fn(xl, bl, labels)
    total = loss * 3.0
    if use_y:
        total = total + (y.double() * dy.double()).sum()
    total.backward()
    return [loss.detach(), correct, y.detach()] + grads(xl, bl)


@pytest.mark.parametrize("backend,shape", CASES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("use_y", [False, True], ids=["loss", "loss+logits"])
def test_cross_entropy_matches_reference(backend, shape, dtype, use_y):
    x, bias, labels, dy = _inputs(shape, dtype)
    ours = _run(lambda a, b, lab: cross_entropy(a, b, lab, backend), x, bias, labels, dy, use_y)
    ref = _run(lambda a, b, lab: cross_entropy_ref(a, b, lab), x, bias, labels, dy, use_y, torch.float64)
    lowp = _run(lambda a, b, lab: cross_entropy_ref(a, b, lab, upcast=False), x, bias, labels, dy, use_y)
    assert ours[1].item() == ref[1].item(), f"{backend}: correct count {ours[1].item()} vs {ref[1].item()}"
    assert ours[0].dtype == torch.float32 and ours[2].dtype == dtype
    for name, o, r, t in zip(["loss", "y", "dx", "dbias"], [ours[0], ours[2], ours[3], ours[4]],
                             [ref[0], ref[2], ref[3], ref[4]], [lowp[0], lowp[2], lowp[3], lowp[4]]):
        what = f"{backend} {tuple(shape)} {name}"
        if dtype == torch.float32 or name in ("loss", "dbias"):  # fp32 outputs
            tol = FP32_GRAD_TOL if name in ("dx", "dbias") else FP32_TOL
            if dtype == torch.bfloat16:  # fp32 sums of bf16-rounded terms
                tol = {"atol": 2e-3 * max(1.0, r.abs().max().item()), "rtol": 1e-2}
            torch.testing.assert_close(o.double(), r.double(), **tol, msg=lambda m, w=what: f"{w}: {m}")
        else:
            assert_bf16_close(o, r, t, what)


def test_cross_entropy_cpu_gradcheck_fp64():
    x, bias, labels, _ = _inputs((3, 11), torch.float64)
    fn = lambda a, b: cross_entropy(a, b, labels, "cpu")[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, [leaf(x), leaf(bias.double())])


def test_cross_entropy_without_bias_and_errors():
    x, _, labels, _ = _inputs((4, 9), torch.float32)
    ours = _run(lambda a, b, lab: cross_entropy(a, None, lab, "cpu"), x, None, labels, None, False)
    ref = _run(lambda a, b, lab: cross_entropy_ref(a, None, lab), x, None, labels, None, False, torch.float64)
    torch.testing.assert_close(ours[0].double(), ref[0].double(), **FP32_TOL)
    torch.testing.assert_close(ours[3].double(), ref[3].double(), **FP32_GRAD_TOL)
    with pytest.raises(RuntimeError, match="class index"):
        cross_entropy(x, None, torch.full((4,), 9), "cpu")
    with pytest.raises(BertperfError, match="labels"):
        cross_entropy(x, None, labels[:3], "cpu")
