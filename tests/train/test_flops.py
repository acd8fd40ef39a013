"""The pre-training FLOP formula against a hand count of every matmul and against torch's FLOP counter."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from bertperf.report.flops import achieved_tflops, pretrain_flops_breakdown, pretrain_flops_per_sequence


def hand_count(L: int, h: int, inter: int, heads: int, V: int, s: int, m: int) -> float:
    """Sum 2*M*K*N over every matmul of one forward pass, times 3 for forward + backward."""
    d = h // heads
    mm = []  # (M, K, N)
    for _ in range(L):
        mm += [(s, h, h)] * 4  # Q, K, V, attention output
        mm += [(s, d, s)] * heads  # scores per head
        mm += [(s, s, d)] * heads  # probabilities x values per head
        mm += [(s, h, inter), (s, inter, h)]  # FFN
    mm += [(m, h, h), (m, h, V)]  # MLM transform and decoder at the m masked positions
    mm += [(1, h, h), (1, h, 2)]  # pooler on [CLS], NSP classifier
    return 3.0 * sum(2 * a * b * c for a, b, c in mm)


@pytest.mark.parametrize("L,h,inter,heads,V,s,m", [
    (2, 128, 512, 2, 30522, 128, 20),  # the tiny preset
    (1, 32, 48, 4, 101, 9, 3),  # FFN not 4h, odd lengths
    (3, 64, 256, 8, 1000, 16, 0),  # nothing masked
])
def test_formula_matches_hand_count(L, h, inter, heads, V, s, m):
    cfg = SimpleNamespace(num_hidden_layers=L, hidden_size=h, intermediate_size=inter, vocab_size=V)
    assert pretrain_flops_per_sequence(cfg, s, m) == pytest.approx(hand_count(L, h, inter, heads, V, s, m), rel=1e-12)


def test_bert_base_reference_value():
    base = SimpleNamespace(num_hidden_layers=12, hidden_size=768, intermediate_size=3072, vocab_size=30522)
    parts = pretrain_flops_breakdown(base, 128, 20)
    # REFERENCE.md: ~70 GFLOP per sequence; per token 6*L*12*h^2 + 12*L*s*h + 6*f*(h^2 + V*h)
    per_token = 6 * 12 * 12 * 768**2 + 12 * 12 * 128 * 768 + 6 * (20 / 128) * (768**2 + 30522 * 768)
    assert parts.dense + parts.attention + parts.mlm_head == pytest.approx(per_token * 128, rel=1e-12)
    assert parts.total == pytest.approx(69.93e9, rel=1e-3)
    assert achieved_tflops(parts.total, 100.0) == pytest.approx(parts.total * 100 / 1e12)


def test_formula_matches_torch_flop_counter():
    """Count the FLOPs torch actually executes for one training step of an HF BERT encoder with a
    sparse MLM head and an NSP head (dropout off, eager attention: torch's counter does not see the CPU flash kernel; no download:
    the model is built from a config)."""
    import transformers
    from torch.utils.flop_counter import FlopCounterMode

    L, h, inter, heads, V, s, m = 2, 64, 128, 4, 500, 24, 5
    hf_cfg = transformers.BertConfig(vocab_size=V, hidden_size=h, num_hidden_layers=L, num_attention_heads=heads,
                                     intermediate_size=inter, hidden_dropout_prob=0.0,
                                     attention_probs_dropout_prob=0.0, attn_implementation="eager")
    torch.manual_seed(0)
    encoder = transformers.BertModel(hf_cfg, add_pooling_layer=True)
    transform = torch.nn.Linear(h, h)
    decoder_bias = torch.nn.Parameter(torch.zeros(V))
    nsp = torch.nn.Linear(h, 2)
    ids = torch.randint(5, V, (1, s))
    positions = torch.tensor([1, 4, 7, 11, 20])
    with FlopCounterMode(display=False) as counter:
        out = encoder(input_ids=ids, attention_mask=torch.ones(1, s, dtype=torch.long))
        hidden = out.last_hidden_state[0, positions]  # [m, h]
        logits = transform(hidden) @ encoder.embeddings.word_embeddings.weight.t() + decoder_bias
        loss = torch.nn.functional.cross_entropy(logits, ids[0, positions])
        loss = loss + torch.nn.functional.cross_entropy(nsp(out.pooler_output), torch.tensor([1]))
        loss.backward()
    cfg = SimpleNamespace(num_hidden_layers=L, hidden_size=h, intermediate_size=inter, vocab_size=V)
    assert counter.get_total_flops() == pretrain_flops_per_sequence(cfg, s, m)


@pytest.mark.parametrize("sparse", [False, True])
def test_bertperf_model_flops_match_formula(sparse):
    """torch's FLOP counter over one training step of bertperf's own BertForPreTraining (fused
    attention; the counter is given the FLOPs of the copy-free attention GEMM ops, and counts the
    rest itself) equals the formula; with `sparse_last_layer` the formula's
    `last_layer_rows = m + 1` ([CLS] and the masked rows)."""
    from torch.utils.flop_counter import FlopCounterMode

    from bertperf.model import BertConfig, BertForPreTraining
    from bertperf.ops.packed_attention import flop_formulas

    L, h, inter, heads, V, s, m = 2, 64, 128, 4, 500, 24, 5
    cfg = BertConfig(vocab_size=V, hidden_size=h, num_hidden_layers=L, num_attention_heads=heads,
                     intermediate_size=inter, max_position_embeddings=64, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0, attention_impl="fused", sparse_last_layer=sparse)
    torch.manual_seed(0)
    model = BertForPreTraining(cfg).train()
    ids = torch.randint(5, V, (1, s))
    positions = torch.tensor([[1, 4, 7, 11, 20]])
    with FlopCounterMode(display=False, custom_mapping=flop_formulas()) as counter:
        out = model(ids, torch.zeros_like(ids), torch.ones_like(ids), positions, ids.gather(1, positions),
                    torch.tensor([1]))
        out.loss.backward()
    shape = SimpleNamespace(num_hidden_layers=L, hidden_size=h, intermediate_size=inter, vocab_size=V)
    assert counter.get_total_flops() == pretrain_flops_per_sequence(shape, s, m, m + 1 if sparse else None)
    if sparse:
        assert pretrain_flops_per_sequence(shape, s, m, s) == pretrain_flops_per_sequence(shape, s, m)
