"""The training fast paths of the model against their plain torch equivalents: the fused MLM
cross-entropy (loss, gradient, correct count), the sparse word-embedding gradient added into the
tied decoder's dense one, and attention without a mask when nothing is padded."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bertperf.model import BertConfig, BertForPreTraining
from bertperf.model.bert import attention, attention_mask
from bertperf.model.heads import mlm_cross_entropy
from tests.model.conftest import perturb_, random_batch, random_positions


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("m,v,spread", [(1, 2, 1.0), (7, 301, 3.0), (33, 1000, 30.0), (160, 4097, 0.1)])
def test_mlm_cross_entropy_equals_torch(dtype, m, v, spread):
    gen = torch.Generator().manual_seed(m * v)
    x = (torch.randn(m, v, generator=gen) * spread).to(dtype)
    labels = torch.randint(0, v, (m,), generator=gen)
    labels[: m // 2] = x[: m // 2].float().argmax(-1)  # some rows predicted right
    a = x.clone().requires_grad_(True)
    b = x.clone().requires_grad_(True)
    loss, correct = mlm_cross_entropy(a, labels)
    ref = F.cross_entropy(b.float(), labels)
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-6)
    assert loss.dtype == torch.float32 and correct.dtype == torch.int64
    assert correct.item() == int((x.argmax(-1) == labels).sum()) >= m // 2
    (loss * 2.5).backward()
    (ref * 2.5).backward()
    assert a.grad.dtype == dtype
    # a few float32 ulps of the largest gradient; bf16: the rounding of the returned gradient
    ulp = torch.finfo(torch.float32).eps if dtype == torch.float32 else 2 ** -8
    tol = 4 * ulp * b.grad.float().abs().max().item()
    torch.testing.assert_close(a.grad.float(), b.grad.float(), rtol=0, atol=tol)


def test_mlm_cross_entropy_backward_twice_raises():
    """The [M, V] gradient buffer is scaled in place and released by the first backward."""
    x = torch.randn(5, 17, requires_grad=True)
    labels = torch.tensor([0, 3, 16, 3, 9])
    loss, _ = mlm_cross_entropy(x, labels)
    first = torch.autograd.grad(loss * 3.0, x, retain_graph=True)[0]
    torch.testing.assert_close(first, 3.0 * torch.autograd.grad(F.cross_entropy(x, labels), x)[0],
                               rtol=1e-6, atol=1e-7)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        torch.autograd.grad(loss, x)


def test_mlm_cross_entropy_far_logits_stay_finite():
    """A label whose probability underflows fp32 still gives the exact (large) loss."""
    x = torch.tensor([[0.0, 200.0, -50.0]], requires_grad=True)
    labels = torch.tensor([2])
    loss, correct = mlm_cross_entropy(x, labels)
    torch.testing.assert_close(loss, F.cross_entropy(x, labels))
    assert torch.isfinite(loss) and correct.item() == 0
    loss.backward()
    torch.testing.assert_close(x.grad, torch.tensor([[0.0, 1.0, -1.0]]))


def test_mlm_cross_entropy_without_rows_keeps_graph():
    x = torch.zeros(0, 11, requires_grad=True)
    loss, correct = mlm_cross_entropy(x, torch.zeros(0, dtype=torch.long))
    assert loss.item() == 0.0 and correct.item() == 0
    loss.backward()
    assert x.grad.shape == (0, 11)


CONFIG = BertConfig(vocab_size=500, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                    attention_probs_dropout_prob=0.0)


@pytest.mark.parametrize("lengths", [[24, 24], [24, 9, 17]])
def test_sparse_word_gradient_equals_dense(lengths):
    """loss.backward() with the MLM labels (sparse lookup gradient added into the decoder's dense
    one) gives the same gradients as a plain dense backward of the same loss."""
    torch.manual_seed(0)
    model = BertForPreTraining(CONFIG).train()
    perturb_(model, 7)
    gen = torch.Generator().manual_seed(len(lengths))
    ids, seg, mask = random_batch(gen, len(lengths), max(lengths), CONFIG.vocab_size, lengths)
    pos = random_positions(gen, lengths, 5, [5] * len(lengths))
    mlm_ids = torch.randint(1, CONFIG.vocab_size, pos.shape, generator=gen)
    nsp = torch.randint(0, 2, (len(lengths),), generator=gen)
    out = model(ids, seg, mask, pos, mlm_ids, nsp)
    out.loss.backward()
    fast = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    # reference: no labels given to the model (dense lookup gradient), the loss built outside
    ref = model(ids, seg, mask, pos)
    loss = (F.cross_entropy(ref.mlm_logits, mlm_ids[pos > 0])
            + F.cross_entropy(ref.nsp_logits, nsp))
    torch.testing.assert_close(out.loss, loss, rtol=1e-6, atol=1e-6)
    loss.backward()
    word = model.bert.embeddings.word.weight
    assert fast["bert.embeddings.word.weight"].layout == torch.strided
    for n, p in model.named_parameters():
        torch.testing.assert_close(fast[n], p.grad, rtol=1e-5, atol=1e-6, msg=n)
    assert word.grad.abs().sum() > 0


@pytest.mark.parametrize("impl", ["sdpa", "fused"])
@pytest.mark.parametrize("b,a,s,d", [(2, 3, 17, 8), (1, 1, 5, 4)])
def test_unmasked_attention_equals_all_true_mask(impl, b, a, s, d):
    gen = torch.Generator().manual_seed(s)
    q, k, v = (torch.randn(b, a, s, d, generator=gen) for _ in range(3))
    full = torch.ones(b, s, dtype=torch.long)
    assert attention_mask(full) is None and attention_mask(None) is None
    padded = full.clone()
    padded[0, -2:] = 0
    m = attention_mask(padded)
    assert m.dtype == torch.bool and m.shape == (b, 1, 1, s) and not m[0, 0, 0, -1]
    explicit = full[:, None, None, :].bool()
    y0 = attention(q, k, v, None, 0.0, False, "torch", impl)
    y1 = attention(q, k, v, explicit, 0.0, False, "torch", impl)
    torch.testing.assert_close(y0, y1, rtol=1e-6, atol=1e-6)


def twin_models(cfg_a: BertConfig, cfg_b: BertConfig, seed: int) -> tuple[BertForPreTraining, BertForPreTraining]:
    """Two models in train mode with the same perturbed weights, built from two configs."""
    torch.manual_seed(0)
    a = BertForPreTraining(cfg_a).train()
    perturb_(a, seed)
    b = BertForPreTraining(cfg_b).train()
    b.load_state_dict(a.state_dict())
    return a, b


def pretraining_batch(seed: int, lengths: list[int], p: int, most: int):
    """ids, seg, mask [B, S] (right-padded to `lengths`), masked positions [B, p] (up to `most`
    per row, zero-padded), their MLM ids (0 at padding) and NSP labels [B]."""
    gen = torch.Generator().manual_seed(seed)
    ids, seg, mask = random_batch(gen, len(lengths), max(lengths), CONFIG.vocab_size, lengths)
    pos = random_positions(gen, lengths, p, [min(most, n - 1) for n in lengths])
    mlm_ids = torch.where(pos > 0, torch.randint(1, CONFIG.vocab_size, pos.shape, generator=gen), 0)
    nsp = torch.randint(0, 2, (len(lengths),), generator=gen)
    return ids, seg, mask, pos, mlm_ids, nsp


@pytest.mark.parametrize("impl", ["sdpa", "fused"])
@pytest.mark.parametrize("lengths", [[24, 7, 13], [1, 24], [24, 24]])
def test_unpadded_encoder_equals_padded(impl, lengths):
    """config.unpad: same loss, same valid hidden states and gradients; pad rows are zeros."""
    cfg = CONFIG.replace(attention_impl=impl)
    padded, unpadded = twin_models(cfg, cfg.replace(unpad=True), 3)
    ids, seg, mask, pos, mlm_ids, nsp = pretraining_batch(sum(lengths), lengths, 4, 4)
    outs = []
    for model in (padded, unpadded):
        out = model(ids, seg, mask, pos, mlm_ids, nsp)
        out.loss.backward()
        hidden = model.bert(ids, seg, mask).last_hidden_state
        outs.append((out.loss, hidden, {n: p.grad for n, p in model.named_parameters()}))
    (l0, h0, g0), (l1, h1, g1) = outs
    torch.testing.assert_close(l1, l0, rtol=1e-6, atol=1e-6)
    valid = mask.bool()
    torch.testing.assert_close(h1[valid], h0[valid], rtol=1e-5, atol=1e-5)
    assert (h1[~valid] == 0).all()
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-5, atol=1e-6, msg=n)


def test_unpad_is_not_written_to_json(tmp_path):
    cfg = CONFIG.replace(unpad=True)
    assert "unpad" not in cfg.to_hf_dict()
    with pytest.raises(Exception, match="unpad"):
        CONFIG.replace(unpad="yes")


@pytest.mark.parametrize("impl,backend", [("sdpa", "torch"), ("fused", "cpu")])
@pytest.mark.parametrize("layers", [1, 3])
@pytest.mark.parametrize("lengths,unpad", [([24, 7, 13], False), ([24, 7, 13], True), ([24, 24], False)])
def test_sparse_last_layer_equals_full(impl, backend, layers, lengths, unpad):
    """config.sparse_last_layer (the last layer computes only [CLS] and the masked rows): the same
    loss, logits and every gradient as the full last layer; BertModel's output at the positions
    equals the full output gathered there."""
    cfg = CONFIG.replace(attention_impl=impl, kernel_backend=backend, num_hidden_layers=layers, unpad=unpad)
    full, sparse = twin_models(cfg.replace(sparse_last_layer=False), cfg, 11)
    ids, seg, mask, pos, mlm_ids, nsp = pretraining_batch(sum(lengths) + layers, lengths, 6, 5)  # zero-padded rows too
    outs = []
    for model in (full, sparse):
        out = model(ids, seg, mask, pos, mlm_ids, nsp)
        out.loss.backward()
        outs.append((out, {n: p.grad for n, p in model.named_parameters()}))
    (o0, g0), (o1, g1) = outs
    assert o1.mlm_logits.shape == o0.mlm_logits.shape == (int((pos > 0).sum()), CONFIG.vocab_size)
    for name in ("loss", "mlm_loss", "nsp_loss", "mlm_logits", "nsp_logits"):
        torch.testing.assert_close(getattr(o1, name), getattr(o0, name), rtol=1e-5, atol=1e-5, msg=name)
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-5, atol=1e-6, msg=n)
    with torch.no_grad():
        every = sparse.bert(ids, seg, mask)
        at = sparse.bert(ids, seg, mask, output_positions=pos)
    assert at.last_hidden_state.shape == (len(lengths), pos.shape[1], CONFIG.hidden_size)
    torch.testing.assert_close(at.last_hidden_state, every.last_hidden_state.gather(
        1, pos[:, :, None].expand(-1, -1, CONFIG.hidden_size)), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(at.pooler_output, every.pooler_output, rtol=1e-5, atol=1e-5)


def test_sparse_last_layer_setting_is_checked_and_not_written_to_json():
    assert "sparse_last_layer" not in CONFIG.to_hf_dict()
    with pytest.raises(Exception, match="sparse_last_layer"):
        CONFIG.replace(sparse_last_layer=1)
