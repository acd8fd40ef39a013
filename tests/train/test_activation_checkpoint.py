"""--checkpoint_activations: per-layer recomputation gives the same losses and gradients, dropout on.

Reference: the same model without checkpointing, from the same weights and the same RNG seed.
torch.utils.checkpoint (use_reentrant=False) replays the saved RNG state when it recomputes a
layer, so the dropout masks match and results are bit-identical on CPU.
"""
from __future__ import annotations

import copy

import pytest
import torch

from bertperf.model import BertConfig, BertForPreTraining
from bertperf.train.activation_checkpoint import checkpoint_encoder_layers


def batch(b: int, s: int, p: int, vocab: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, s, dtype=torch.long)
    mask[0, s - s // 3:] = 0  # some padding in the first sequence
    positions = torch.zeros(b, p, dtype=torch.long)
    for i in range(b):
        n = min(p, max(1, (s - 1) // 2))
        positions[i, :n] = torch.randperm(s - 1, generator=g)[:n].sort().values + 1
    return {"input_ids": torch.randint(0, vocab, (b, s), generator=g), "segment_ids": (torch.arange(s) >= s // 2)
            .long().expand(b, s).clone(), "input_mask": mask, "masked_lm_positions": positions,
            "masked_lm_ids": torch.randint(0, vocab, (b, p), generator=g) * (positions > 0),
            "next_sentence_labels": torch.randint(0, 2, (b,), generator=g)}


@pytest.mark.parametrize("b,s,p", [(1, 7, 2), (3, 33, 5), (4, 64, 10)])
def test_same_loss_and_gradients_with_dropout(b, s, p):
    config = BertConfig.preset("tiny", vocab_size=1000, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    torch.manual_seed(0)
    plain = BertForPreTraining(config)
    ckpt = copy.deepcopy(plain)
    assert checkpoint_encoder_layers(ckpt) == config.num_hidden_layers
    assert checkpoint_encoder_layers(ckpt) == config.num_hidden_layers  # idempotent
    plain.train(), ckpt.train()
    data = batch(b, s, p, config.vocab_size, seed=b * 100 + s)
    results = []
    for model in (plain, ckpt):
        torch.manual_seed(1234)
        out = model(**data)
        out.loss.backward()
        results.append((out.loss.detach(), {n: q.grad.clone() for n, q in model.named_parameters()}))
    (l0, g0), (l1, g1) = results
    assert torch.equal(l0, l1)
    assert g0.keys() == g1.keys()
    for name in g0:
        assert torch.equal(g0[name], g1[name]), name
    # and dropout was really active: another seed gives another loss
    torch.manual_seed(99)
    assert not torch.equal(plain(**data).loss.detach(), l0)


def test_a_few_training_steps_match_and_state_dict_is_unchanged():
    config = BertConfig.preset("tiny", vocab_size=500)
    torch.manual_seed(0)
    plain = BertForPreTraining(config)
    ckpt = copy.deepcopy(plain)
    checkpoint_encoder_layers(ckpt)
    assert list(plain.state_dict()) == list(ckpt.state_dict())
    losses = []
    for model in (plain, ckpt):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        torch.manual_seed(7)
        run = []
        for step in range(3):
            loss = model(**batch(2, 16, 3, config.vocab_size, seed=step)).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            run.append(loss.item())
        losses.append(run)
    assert losses[0] == losses[1]
    with torch.no_grad():  # evaluation path: no checkpointing, same output
        model_inputs = batch(2, 16, 3, config.vocab_size, seed=9)
        plain.eval(), ckpt.eval()
        assert torch.equal(plain(**model_inputs).loss, ckpt(**model_inputs).loss)


def test_refuses_a_model_without_layers():
    with pytest.raises(TypeError, match="no encoder layers"):
        checkpoint_encoder_layers(torch.nn.Linear(2, 2))
