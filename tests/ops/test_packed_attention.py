"""packed_attention: the copy-free MKL batch GEMMs (cpu, fp32) against the composite they replace.

References: `packed_attention_ref` with the same softmax backend and seed (the same dropout mask:
the outputs and the qkv gradient must agree to fp32 rounding), and the pure-torch composite in
float64 without dropout. Shapes: one token, one head, primes, BERT's head size 64, padding masks.
"""
from __future__ import annotations

import pytest
import torch

from bertperf.model.bert import attention_mask_bias
from bertperf.ops.packed_attention import (
    MAX_SEQ,
    _gemm_available,
    packed_attention,
    packed_attention_ref,
    packed_attention_supported,
)
from bertperf.utils.errors import BertperfError
from tests.ops._util import FP32_GRAD_TOL, FP32_TOL

SEED = 1234
# (batch, seq, heads, head_dim)
SHAPES = [(1, 1, 1, 8), (2, 5, 3, 8), (3, 37, 2, 16), (2, 128, 4, 64), (1, 13, 12, 64)]


def _inputs(b, s, a, d, padded, seed=0):
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(b, s, 3 * a * d, generator=g)
    dctx = torch.randn(b, s, a * d, generator=g)
    mask = None
    if padded:
        lengths = torch.randint(1, s + 1, (b,), generator=g)
        keep = torch.arange(s)[None, :] < lengths[:, None]
        mask = attention_mask_bias(keep[:, None, None, :])
    return qkv, mask, dctx


def _run(fn, qkv, mask, dctx, dtype=None):
    x = qkv.detach().to(dtype or qkv.dtype).requires_grad_(True)
    out = fn(x, mask)
    out.backward(dctx.to(out.dtype))
    return out.detach(), x.grad


def test_the_gemms_are_available_in_this_torch_build():
    # torch's x86 CPU wheels carry MKL; without it the model takes the composite (tested below)
    assert _gemm_available(), "MKL's cblas_sgemm_batch not found in libtorch_cpu"


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("padded", [True, False], ids=["padded", "full"])
@pytest.mark.parametrize("p", [0.0, 0.1])
def test_packed_attention_matches_the_composite(shape, padded, p):
    b, s, a, d = shape
    inputs = _inputs(b, s, a, d, padded)
    assert packed_attention_supported(inputs[0], "cpu")
    ours = _run(lambda x, m: packed_attention(x, m, a, p, True, SEED, "cpu"), *inputs)
    ref = _run(lambda x, m: packed_attention_ref(x, m, a, p, True, SEED, "cpu"), *inputs)
    torch.testing.assert_close(ours[0], ref[0], **FP32_TOL)
    torch.testing.assert_close(ours[1], ref[1], **FP32_GRAD_TOL)
    if p == 0.0:  # and the pure-torch composite in float64
        exact = _run(lambda x, m: packed_attention_ref(x, m, a, 0.0, True, None, "torch"), *inputs,
                     dtype=torch.float64)
        torch.testing.assert_close(ours[0], exact[0].float(), **FP32_TOL)
        torch.testing.assert_close(ours[1], exact[1].float(), **FP32_GRAD_TOL)


def test_dropout_is_seeded_and_eval_ignores_it():
    qkv, mask, _ = _inputs(2, 17, 3, 8, True)
    run = lambda p, training, seed: packed_attention(qkv, mask, 3, p, training, seed, "cpu")  # noqa: E731
    assert torch.equal(run(0.3, True, 5), run(0.3, True, 5))
    assert not torch.allclose(run(0.3, True, 5), run(0.3, True, 6))
    torch.testing.assert_close(run(0.3, False, 5), run(0.0, True, None), rtol=0, atol=0)
    torch.manual_seed(0)
    a = run(0.3, True, None)  # seed drawn from torch's generator
    torch.manual_seed(0)
    assert torch.equal(a, run(0.3, True, None))


@pytest.mark.parametrize("case", ["bf16", "long", "torch-backend"])
def test_unsupported_inputs_take_the_composite(case):
    s = MAX_SEQ + 1 if case == "long" else 9
    qkv, mask, dctx = _inputs(1, s, 2, 8, True)
    dtype = torch.bfloat16 if case == "bf16" else torch.float32
    backend = "torch" if case == "torch-backend" else "cpu"
    assert not packed_attention_supported(qkv.to(dtype), backend)
    ours = _run(lambda x, m: packed_attention(x, m, 2, 0.1, True, SEED, backend), qkv, mask, dctx, dtype)
    ref = _run(lambda x, m: packed_attention_ref(x, m, 2, 0.1, True, SEED, backend), qkv, mask, dctx, dtype)
    assert torch.equal(ours[0], ref[0]) and torch.equal(ours[1], ref[1])


def test_bad_inputs_are_named():
    with pytest.raises(BertperfError, match="qkv must be"):
        packed_attention(torch.randn(2, 5, 10), None, 3, backend="cpu")
    with pytest.raises(BertperfError, match="dropout probability"):
        packed_attention(torch.randn(2, 5, 18), None, 3, p=1.0, backend="cpu")
    with pytest.raises(RuntimeError, match="probs"):
        torch.ops.bertperf.attention_context(torch.randn(2, 3, 5, 4), torch.randn(2, 5, 18), 3)
