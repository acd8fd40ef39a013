"""BertConfig.attention_impl: the "fused" attention path (scores by matmul, the fused
scale + mask + softmax + dropout op of bertperf.ops.softmax, then P V) against the SDPA path.

References: the same model with attention_impl="sdpa" (itself checked against HF transformers in
test_parity.py), same weights and inputs, dropout off; and HF transformers' eager BertModel on
the real all-MiniLM-L6-v2 checkpoint. Tolerances as in test_kernel_backend.py (fp32: loss rel
1e-5, gradients rtol 1e-4 with atol 1e-4 * max|grad_ref|; HF parity atol 1e-5).
"""
from __future__ import annotations

import pytest
import torch

from bertperf.model import BertConfig, BertModel
from bertperf.model.bert import attention, attention_mask_bias
from bertperf.model.heads import BertForPreTraining
from bertperf.utils.errors import BertperfError
from tests.model.conftest import loss_and_grads, perturb_, pretraining_batch

VOCAB = 1000


def _model(backend: str, impl: str, dropout: float = 0.0, seed: int = 0) -> BertForPreTraining:
    cfg = BertConfig.preset("tiny", vocab_size=VOCAB, max_position_embeddings=64,
                            hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
                            kernel_backend=backend, attention_impl=impl)
    m = BertForPreTraining(cfg)
    torch.manual_seed(seed)
    perturb_(m, seed)
    return m


def _batch(b: int, s: int, lengths: list[int], seed: int = 1):
    return pretraining_batch(b, s, lengths, VOCAB, seed)


_run = loss_and_grads


def _assert_same(out_f, g_f, out_r, g_r) -> None:
    torch.testing.assert_close(out_f.loss, out_r.loss, rtol=1e-5, atol=0)
    scale = out_r.mlm_logits.abs().max().item()
    torch.testing.assert_close(out_f.mlm_logits, out_r.mlm_logits, rtol=1e-5, atol=1e-5 * scale)
    assert g_r.keys() == g_f.keys()
    for name, gr in g_r.items():
        torch.testing.assert_close(g_f[name], gr, rtol=1e-4, atol=1e-4 * gr.abs().max().item(),
                                   msg=lambda m, n=name: f"{n}: {m}")


SHAPES = [(3, 37, [37, 20, 9]), (1, 5, [5]), (4, 16, [16, 3, 11, 2])]


@pytest.mark.parametrize("backend", ["cpu", "torch"])
@pytest.mark.parametrize("b,s,lengths", SHAPES)
def test_fused_attention_matches_sdpa_fp32(backend, b, s, lengths):
    """Same loss, logits and every parameter's gradient as SDPA (dropout off, padded batches)."""
    ref = _model("torch", "sdpa").train()
    fused = _model(backend, "fused").train()
    fused.load_state_dict(ref.state_dict())
    batch = _batch(b, s, lengths)
    _assert_same(*_run(fused, batch), *_run(ref, batch))


def test_fused_attention_cpu_matches_torch_backend():
    """kernel_backend cpu vs torch on the fused path itself (same composite, different kernels)."""
    ref = _model("torch", "fused").train()
    fused = _model("cpu", "fused").train()
    fused.load_state_dict(ref.state_dict())
    batch = _batch(3, 37, [37, 20, 9])
    _assert_same(*_run(fused, batch), *_run(ref, batch))


def test_fused_attention_bf16_error_within_sdpa_bf16_error():
    """Under bf16 autocast the fused path's error against the fp32 model is at most 2x the SDPA
    path's own bf16 error (+1e-3 relative slack)."""
    exact = _model("torch", "sdpa").train()
    sdpa = _model("torch", "sdpa").train()
    fused = _model("cpu", "fused").train()
    sdpa.load_state_dict(exact.state_dict())
    fused.load_state_dict(exact.state_dict())
    batch = _batch(3, 37, [37, 20, 9])
    out_x, g_x = _run(exact, batch)
    out_s, g_s = _run(sdpa, batch, autocast=True)
    out_f, g_f = _run(fused, batch, autocast=True)
    ref_err = (out_s.loss.float() - out_x.loss).abs().item()
    assert (out_f.loss.float() - out_x.loss).abs().item() <= 2 * ref_err + 1e-3 * out_x.loss.abs().item()
    for name, gx in g_x.items():
        e_s = (g_s[name].float() - gx).norm().item()
        e_f = (g_f[name].float() - gx).norm().item()
        assert e_f <= 2 * e_s + 1e-3 * gx.norm().item(), f"{name}: fused {e_f:.3g} vs sdpa {e_s:.3g}"


def test_fused_attention_dropout_is_seeded_and_active():
    """With attention dropout on (hidden dropout off), the cpu fused path is reproducible from
    torch.manual_seed, differs from the dropout-free result, and keeps the expected mean."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 17, 8, requires_grad=True) for _ in range(3))
    mask = torch.ones(2, 1, 1, 17, dtype=torch.bool)
    mask[1, ..., 12:] = False

    def run(p: float):
        torch.manual_seed(123)
        return attention(q, k, v, mask, p, True, "cpu", "fused")

    a, b, clean = run(0.3), run(0.3), run(0.0)
    assert torch.equal(a, b)
    assert not torch.allclose(a, clean)
    # dropout is unbiased: averaged over many draws the output approaches the clean one
    torch.manual_seed(7)
    mean = torch.stack([attention(q, k, v, mask, 0.3, True, "cpu", "fused") for _ in range(200)]).mean(0)
    assert (mean - clean).abs().mean() < 0.1 * clean.abs().mean()
    # eval mode (training=False) ignores p
    torch.testing.assert_close(attention(q, k, v, mask, 0.3, False, "cpu", "fused"), clean, rtol=0, atol=0)


def test_attention_mask_bias_values():
    mask = torch.tensor([True, False, True]).view(1, 1, 1, 3)
    bias = attention_mask_bias(mask)
    assert bias.dtype == torch.float32 and bias.shape == mask.shape
    assert bias.flatten().tolist() == [0.0, torch.finfo(torch.float32).min, 0.0]


def test_attention_impl_is_validated_and_round_trips_through_hf_json():
    with pytest.raises(BertperfError, match="attention_impl"):
        BertConfig.preset("tiny", attention_impl="flash")
    cfg = BertConfig.preset("tiny", attention_impl="fused")
    d = cfg.to_hf_dict()
    assert d["attention_impl"] == "fused"
    assert BertConfig.from_dict(d).attention_impl == "fused"
    del d["attention_impl"]  # a config.json written by transformers
    assert BertConfig.from_dict(d).attention_impl == "auto"


@pytest.mark.parametrize("backend, path", [("cpu", "fused"), ("torch", "sdpa")])
def test_auto_attention_takes_the_fused_path_only_with_the_cpu_kernels(backend, path):
    """attention_impl "auto" (the default) runs the fused path exactly when the kernel backend is
    the C++ CPU one. With attention dropout on, the two paths draw different masks from the same
    seed, so the output names the path taken: it equals that path's output bit for bit and
    differs from the other's."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 17, 8) for _ in range(3))
    mask = torch.ones(2, 1, 1, 17, dtype=torch.bool)
    mask[1, ..., 12:] = False

    def run(impl: str):
        torch.manual_seed(123)
        return attention(q, k, v, mask, 0.3, True, backend, impl)

    other = "sdpa" if path == "fused" else "fused"
    auto = run("auto")
    assert torch.equal(auto, run(path))
    assert not torch.allclose(auto, run(other))
    assert BertConfig().attention_impl == "auto" and BertConfig().kernel_backend == "auto"


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_real_checkpoint_fused_attention_matches_transformers(minilm_dir, sentence_batch, backend):
    """HF parity with the fused attention path on the real all-MiniLM-L6-v2 checkpoint."""
    import transformers

    ours = BertModel.from_pretrained(minilm_dir, attention_impl="fused", kernel_backend=backend).eval()
    ref = transformers.BertModel.from_pretrained(minilm_dir, attn_implementation="eager").eval()
    ids, seg, mask = sentence_batch
    with torch.no_grad():
        o = ours(ids, seg, mask)
        r = ref(input_ids=ids, token_type_ids=seg, attention_mask=mask)
    valid = mask.bool()
    assert valid.sum() > 40 and not valid.all()
    torch.testing.assert_close(o.last_hidden_state[valid], r.last_hidden_state[valid], atol=1e-5, rtol=0)
    torch.testing.assert_close(o.pooler_output, r.pooler_output, atol=1e-5, rtol=0)
