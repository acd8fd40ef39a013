"""BertConfig.kernel_backend: the fused ops of bertperf.ops inside the whole model.

Reference: the same model with kernel_backend="torch" (the eager composite, itself checked against
HF transformers in test_parity.py), from the same weights and inputs.

Tolerances (fp32, dropout off): loss rel 1e-5; every parameter's gradient
rtol 1e-4 with atol 1e-4 * max|grad_ref| of that parameter; logits rtol 1e-5, atol 1e-5 * max|ref|.
bf16 (autocast): the fused model's error against the fp32 model may be at most 2x torch's own
bf16 error (+ 1e-3 relative slack, for parameters where torch's error happens to be ~0).
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from bertperf.model import BertConfig
from bertperf.model.heads import BertForPreTraining
from bertperf.utils.errors import BertperfError
from tests.model.conftest import loss_and_grads, perturb_, pretraining_batch

VOCAB = 1000


def _config(backend: str, dropout: float = 0.0, **kw) -> BertConfig:
    base = dict(vocab_size=VOCAB, max_position_embeddings=64, hidden_dropout_prob=dropout,
                attention_probs_dropout_prob=dropout, kernel_backend=backend)
    base.update(kw)
    return BertConfig.preset("tiny", **base)  # L2 H128 A2 I512


def _pair(backend: str, dropout: float = 0.0, seed: int = 0, **kw):
    """(torch model, `backend` model) holding identical weights."""
    ref = BertForPreTraining(_config("torch", dropout, **kw))
    perturb_(ref, seed)
    other = BertForPreTraining(_config(backend, dropout, **kw))
    other.load_state_dict(ref.state_dict())
    return ref, other


def _batch(b: int, s: int, lengths: list[int], seed: int = 1):
    return pretraining_batch(b, s, lengths, VOCAB, seed)


_run = loss_and_grads


SHAPES = [(3, 37, [37, 20, 9]), (1, 5, [5]), (5, 16, [16, 16, 3, 11, 2])]


@pytest.mark.parametrize("b,s,lengths", SHAPES)
def test_cpu_backend_matches_torch_fp32(b, s, lengths):
    ref, fused = _pair("cpu")
    ref.train(), fused.train()  # dropout p = 0: training mode with no randomness
    batch = _batch(b, s, lengths)
    out_r, g_r = _run(ref, batch)
    out_f, g_f = _run(fused, batch)
    torch.testing.assert_close(out_f.loss, out_r.loss, rtol=1e-5, atol=0)
    scale = out_r.mlm_logits.abs().max().item()
    torch.testing.assert_close(out_f.mlm_logits, out_r.mlm_logits, rtol=1e-5, atol=1e-5 * scale)
    assert g_r.keys() == g_f.keys()
    for name, gr in g_r.items():
        torch.testing.assert_close(g_f[name], gr, rtol=1e-4, atol=1e-4 * gr.abs().max().item(),
                                   msg=lambda m, n=name: f"{n}: {m}")


def test_same_parameter_names_and_shapes():
    ref, fused = _pair("cpu")
    assert {k: v.shape for k, v in ref.state_dict().items()} == \
        {k: v.shape for k, v in fused.state_dict().items()}


def test_cpu_backend_trains_with_dropout():
    """Dropout on (bias_dropout_residual path): finite loss and gradients, dropout really active,
    reproducible from torch.manual_seed, and a few SGD steps lower the loss on a fixed batch."""
    torch.manual_seed(0)
    model = BertForPreTraining(_config("cpu", dropout=0.1))
    batch = _batch(3, 37, [37, 20, 9])
    model.eval()
    with torch.no_grad():
        eval_loss = model(*batch).loss
    model.train()
    torch.manual_seed(5)
    out1, g1 = _run(model, batch)
    torch.manual_seed(5)
    out2, g2 = _run(model, batch)
    assert torch.isfinite(out1.loss) and all(torch.isfinite(g).all() for g in g1.values())
    assert out1.loss.item() == out2.loss.item()  # same seeds -> same masks
    assert all(torch.equal(g1[n], g2[n]) for n in g1)
    assert out1.loss.item() != eval_loss.item()  # dropout changed something
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    first = None
    for _ in range(6):
        opt.zero_grad()
        loss = model(*batch).loss
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
    model.eval()
    with torch.no_grad():
        assert model(*batch).loss.item() < eval_loss.item()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("b,s,lengths", [(3, 37, [37, 20, 9]), (2, 24, [24, 7])])
def test_cpu_backend_bf16_autocast_error_bounded_by_torch(b, s, lengths):
    ref, fused = _pair("cpu")
    batch = _batch(b, s, lengths)
    out32, g32 = _run(ref, batch)
    out_r, g_r = _run(ref, batch, autocast=True)
    out_f, g_f = _run(fused, batch, autocast=True)
    err_r = abs(out_r.loss.item() - out32.loss.item()) / out32.loss.item()
    err_f = abs(out_f.loss.item() - out32.loss.item()) / out32.loss.item()
    assert err_f <= 2 * err_r + 1e-3, (err_f, err_r)
    assert _rel(out_f.mlm_logits, out32.mlm_logits) <= 2 * _rel(out_r.mlm_logits, out32.mlm_logits) + 1e-3
    for name in g32:
        ef, er = _rel(g_f[name], g32[name]), _rel(g_r[name], g32[name])
        assert ef <= 2 * er + 1e-3, (name, ef, er)


def test_bad_kernel_backend():
    with pytest.raises(BertperfError, match="kernel_backend"):
        BertConfig.preset("tiny", kernel_backend="gpu")
    with pytest.raises(BertperfError, match="kernel_backend"):
        BertConfig.from_dict({"model_type": "bert", "vocab_size": 10, "hidden_size": 8,
                              "num_hidden_layers": 1, "num_attention_heads": 2,
                              "intermediate_size": 16}, kernel_backend="fast")
    # a valid name that cannot run here fails at the first forward, naming the setting
    model = BertForPreTraining(_config("cuda"))
    with pytest.raises(BertperfError, match="kernel_backend"):
        model(*_batch(1, 5, [5])[:3])


def test_auto_backend_on_cpu_matches_torch():
    ref, auto = _pair("auto")
    batch = _batch(2, 9, [9, 4])
    out_r, _ = _run(ref, batch)
    out_a, _ = _run(auto, batch)
    torch.testing.assert_close(out_a.loss, out_r.loss, rtol=1e-5, atol=0)


_TRITON_SCRIPT = textwrap.dedent("""
    import torch
    from bertperf.model import BertConfig
    from bertperf.model.heads import BertForPreTraining
    from tests.model.conftest import perturb_, random_batch, random_positions

    def make(backend):
        c = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64, max_position_embeddings=16, hidden_dropout_prob=0.0,
                       attention_probs_dropout_prob=0.0, kernel_backend=backend)
        return BertForPreTraining(c)
    ref, tri = make("torch"), make("triton")
    perturb_(ref, 3)
    tri.load_state_dict(ref.state_dict())
    gen = torch.Generator().manual_seed(2)
    ids, seg, mask = random_batch(gen, 2, 7, 64, [7, 4])
    pos = random_positions(gen, [7, 4], 3, [2, 1])
    batch = (ids, seg, mask, pos, torch.randint(1, 64, pos.shape, generator=gen) * (pos > 0),
             torch.tensor([0, 1]))
    for m in (ref, tri):
        m(*batch).loss.backward()
    lr, lt = ref(*batch).loss, tri(*batch).loss
    torch.testing.assert_close(lt, lr, rtol=1e-5, atol=0)
    for (n, pr), pt in zip(ref.named_parameters(), tri.parameters()):
        torch.testing.assert_close(pt.grad, pr.grad, rtol=1e-4, atol=1e-4 * pr.grad.abs().max().item(),
                                   msg=lambda m, n=n: f"{n}: {m}")
    print("OK", lr.item(), lt.item())
""")


def test_triton_backend_under_interpreter_matches_torch():
    """The Triton kernels (interpreted on CPU tensors) in a 1-layer H32 model; a subprocess
    because TRITON_INTERPRET must be set before triton is imported."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": root}
    r = subprocess.run([sys.executable, "-c", _TRITON_SCRIPT], cwd=root, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr
