"""BertForPreTraining and the encoder: tied decoder, sparse MLM head, losses and counts,
padding invariance, initialisation, dropout, bf16."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bertperf.model import BertConfig, BertForPreTraining, BertModel
from bertperf.model.bert import bias_gelu
from bertperf.utils.errors import BertperfError
from tests.model.conftest import perturb_, random_batch, random_positions

CONFIG = BertConfig(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=64, max_position_embeddings=80, hidden_dropout_prob=0.0,
                    attention_probs_dropout_prob=0.0)


def _model(seed: int = 0, config: BertConfig = CONFIG) -> BertForPreTraining:
    torch.manual_seed(seed)
    m = BertForPreTraining(config)
    perturb_(m, seed + 100)
    return m.eval()


def _batch(seed: int, lengths: list[int], s: int, p: int, counts: list[int], vocab: int = CONFIG.vocab_size):
    gen = torch.Generator().manual_seed(seed)
    ids, seg, mask = random_batch(gen, len(lengths), s, vocab, lengths)
    pos = random_positions(gen, lengths, p, counts)
    mlm_ids = torch.where(pos > 0, torch.randint(1, vocab, pos.shape, generator=gen), 0)
    nsp = torch.randint(0, 2, (len(lengths),), generator=gen)
    return ids, seg, mask, pos, mlm_ids, nsp


def test_decoder_is_the_word_embedding_parameter():
    m = BertForPreTraining(CONFIG)
    assert m.mlm.decoder.weight is m.bert.embeddings.word.weight
    names = [n for n, _ in m.named_parameters()]
    assert "mlm.decoder.weight" not in names and len(names) == len(set(names))
    # the tie survives a dtype change and a state-dict reload
    m2 = BertForPreTraining(CONFIG).to(torch.bfloat16)
    assert m2.mlm.decoder.weight is m2.bert.embeddings.word.weight
    m2.load_state_dict(m.state_dict())
    assert m2.mlm.decoder.weight is m2.bert.embeddings.word.weight
    # and gradients from the decoder reach the embedding
    ids, seg, mask, pos, mlm_ids, nsp = _batch(0, [10, 6], 12, 4, [3, 2])
    m.train()
    m(ids, seg, mask, pos, mlm_ids).loss.backward()
    g_decoder_only = m.bert.embeddings.word.weight.grad.clone()
    unused = sorted(set(range(CONFIG.vocab_size)) - set(ids.flatten().tolist()))
    assert g_decoder_only[unused].abs().sum() > 0  # rows never looked up still get decoder gradient


@pytest.mark.parametrize("lengths,s,p,counts", [
    ([20, 9, 17], 20, 6, [6, 2, 0]),   # one sequence without any prediction
    ([5], 5, 3, [1]),                  # single masked token
    ([33, 31, 2, 33], 40, 8, [8, 8, 1, 5]),  # odd length, full prediction lists
])
def test_sparse_mlm_equals_dense_logits_gathered(lengths, s, p, counts):
    m = _model(1)
    ids, seg, mask, pos, _, _ = _batch(1, lengths, s, p, counts)
    with torch.no_grad():
        dense = m(ids, seg, mask).mlm_logits  # [B, S, V]
        sparse = m(ids, seg, mask, masked_lm_positions=pos).mlm_logits  # [M, V]
    b, j = (pos > 0).nonzero(as_tuple=True)
    assert dense.shape == (len(lengths), s, CONFIG.vocab_size)
    assert sparse.shape == (sum(counts), CONFIG.vocab_size)
    torch.testing.assert_close(sparse, dense[b, pos[b, j]], atol=1e-5, rtol=0)


def test_losses_and_counts_match_reference():
    m = _model(2)
    ids, seg, mask, pos, mlm_ids, nsp = _batch(2, [16, 11, 14, 8], 16, 5, [4, 3, 5, 1])
    with torch.no_grad():
        o = m(ids, seg, mask, pos, mlm_ids, nsp)
        dense = m(ids, seg, mask).mlm_logits
    b, j = (pos > 0).nonzero(as_tuple=True)
    logits, labels = dense[b, pos[b, j]], mlm_ids[b, j]
    ref_mlm = F.cross_entropy(logits, labels)
    ref_nsp = F.cross_entropy(o.nsp_logits, nsp)
    torch.testing.assert_close(o.mlm_loss, ref_mlm, atol=1e-5, rtol=0)
    torch.testing.assert_close(o.nsp_loss, ref_nsp, atol=1e-6, rtol=0)
    torch.testing.assert_close(o.loss, ref_mlm + ref_nsp, atol=1e-5, rtol=0)
    assert o.mlm_count.item() == 13
    assert o.mlm_correct.item() == int((logits.argmax(-1) == labels).sum())
    assert o.nsp_correct.item() == int((o.nsp_logits.argmax(-1) == nsp).sum())
    assert o.mlm_correct.dtype == o.mlm_count.dtype == o.nsp_correct.dtype == torch.int64
    # make the counts non-trivial: predict the labels -> all correct
    predicted = torch.zeros_like(pos)
    predicted[b, j] = logits.argmax(-1)
    o2 = m(ids, seg, mask, pos, predicted, nsp)
    assert o2.mlm_correct.item() == 13
    # no labels -> no losses
    o3 = m(ids, seg, mask, pos)
    assert o3.loss is None and o3.mlm_loss is None and o3.nsp_loss is None and o3.mlm_correct is None


def test_pretraining_loss_equals_transformers(tmp_path):
    """Our loss = HF BertForPreTraining's loss with dense labels (-100 off the masked positions)
    and next_sentence_label = our next_sentence_labels (1 = random next)."""
    import transformers

    m = _model(3)
    ids, seg, mask, pos, mlm_ids, nsp = _batch(3, [16, 12, 9], 16, 4, [4, 2, 3])
    m.save_pretrained(tmp_path)
    hf = transformers.BertForPreTraining.from_pretrained(tmp_path).eval()
    labels = torch.full_like(ids, -100)
    b, j = (pos > 0).nonzero(as_tuple=True)
    labels[b, pos[b, j]] = mlm_ids[b, j]
    with torch.no_grad():
        r = hf(input_ids=ids, token_type_ids=seg, attention_mask=mask, labels=labels, next_sentence_label=nsp)
        o = m(ids, seg, mask, pos, mlm_ids, nsp)
    torch.testing.assert_close(o.loss, r.loss, atol=1e-5, rtol=0)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_no_masked_token_gives_zero_mlm_loss_with_graph(backend):
    """Also with the C++ kernels, whose bindings refuse empty tensors: the MLM head's [0, h] rows
    take the reference path (bertperf.ops dispatch)."""
    m = _model(4, CONFIG.replace(kernel_backend=backend, attention_impl="fused")).train()
    ids, seg, mask, pos, mlm_ids, nsp = _batch(4, [8, 8], 8, 3, [0, 0])
    o = m(ids, seg, mask, pos, mlm_ids, nsp)
    assert o.mlm_logits.shape == (0, CONFIG.vocab_size)
    assert o.mlm_loss.item() == 0.0 and o.mlm_count.item() == 0
    o.loss.backward()
    assert m.nsp.weight.grad is not None


@pytest.mark.parametrize("extra", [1, 7, 30])
def test_padding_does_not_change_valid_outputs(extra):
    m = _model(5)
    lengths = [14, 9, 3]
    ids, seg, mask, pos, _, _ = _batch(5, lengths, 14, 4, [4, 2, 1])
    pad = lambda t: F.pad(t, (0, extra))  # noqa: E731
    with torch.no_grad():
        a = m(ids, seg, mask, pos)
        b = m(pad(ids), pad(seg), pad(mask), pos)
        ha = m.bert(ids, seg, mask).last_hidden_state
        hb = m.bert(pad(ids), pad(seg), pad(mask)).last_hidden_state
    valid = mask.bool()
    torch.testing.assert_close(hb[:, :14][valid], ha[valid], atol=1e-5, rtol=0)
    torch.testing.assert_close(b.mlm_logits, a.mlm_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(b.nsp_logits, a.nsp_logits, atol=1e-5, rtol=0)


def test_bert_initialisation():
    cfg = BertConfig.preset("mini", vocab_size=2000)
    torch.manual_seed(0)
    m = BertForPreTraining(cfg)
    for name, p in m.named_parameters():
        if name.endswith("norm.weight"):
            assert torch.all(p == 1), name
        elif name.endswith("bias"):
            assert torch.all(p == 0), name
        else:  # matrices and embeddings: N(0, 0.02)
            assert p.dim() == 2, name
            assert abs(p.mean().item()) < 0.02 * 5 / p.numel() ** 0.5, name
            assert abs(p.std().item() / cfg.initializer_range - 1) < 5 / (2 * p.numel()) ** 0.5 + 0.01, name


def test_dropout_follows_config_and_mode():
    cfg = CONFIG.replace(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    m = _model(6, cfg)
    ids, seg, mask, *_ = _batch(6, [10, 7], 10, 2, [1, 1])
    with torch.no_grad():
        e1, e2 = m.bert(ids, seg, mask).last_hidden_state, m.bert(ids, seg, mask).last_hidden_state
        assert torch.equal(e1, e2)  # eval: deterministic
        m.train()
        t1 = m.bert(ids, seg, mask).last_hidden_state
        assert not torch.allclose(t1, e1, atol=1e-3)
        m0 = _model(6)  # same weights, dropout 0
        m0.train()
        assert torch.equal(m0.bert(ids, seg, mask).last_hidden_state, e1)


def test_bf16_matches_fp32_within_bf16_tolerance():
    m = _model(7)
    ids, seg, mask, pos, mlm_ids, nsp = _batch(7, [16, 10], 16, 4, [4, 3])
    with torch.no_grad():
        ref = m(ids, seg, mask, pos, mlm_ids, nsp)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ac = m(ids, seg, mask, pos, mlm_ids, nsp)
    mb = _model(7).to(torch.bfloat16).train()
    ob = mb(ids, seg, mask, pos, mlm_ids, nsp)
    ob.loss.backward()
    assert ob.mlm_logits.dtype == torch.bfloat16 and ob.loss.dtype == torch.float32
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in mb.parameters())
    for o in (ac, ob):
        torch.testing.assert_close(o.loss, ref.loss, atol=0, rtol=2e-2)


def test_input_errors():
    m = BertModel(CONFIG)
    ids = torch.ones(2, 81, dtype=torch.long)
    with pytest.raises(BertperfError, match="max_position_embeddings"):
        m(ids)
    with pytest.raises(BertperfError, match="input_mask has shape"):
        m(ids[:, :8], None, torch.ones(2, 7, dtype=torch.long))
    with pytest.raises(BertperfError, match="kernel_backend"):
        bias_gelu(torch.zeros(2), torch.zeros(2), "cuda")
