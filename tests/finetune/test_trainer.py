"""The fine-tuning loop with small stand-in models (no BERT needed): losses, prediction with
padding trimmed, schedule, best-checkpoint restore, early stopping, config presets/JSON."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bertperf.finetune import trainer as T
from bertperf.utils.errors import BertperfError


class BagClassifier(torch.nn.Module):
    """Mean of token embeddings over input_mask -> linear; per-token logits for "token"."""

    def __init__(self, vocab=50, classes=3, token=False):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, 16)
        self.out = torch.nn.Linear(16, classes)
        self.token = token
        self.saved = []

    def forward(self, input_ids, segment_ids, input_mask):
        e = self.emb(input_ids)
        if self.token:
            return self.out(e)
        m = input_mask.unsqueeze(-1).float()
        return self.out((e * m).sum(1) / m.sum(1).clamp(min=1))

    def save_pretrained(self, path):
        import os
        os.makedirs(path, exist_ok=True)
        torch.save(self.state_dict(), os.path.join(path, "w.pt"))
        self.saved.append(path)


def _data(n=64, S=12, seed=0, classes=3):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, S - 2, n)
    ids = np.zeros((n, S), np.int64)
    mask = np.zeros((n, S), np.int64)
    labels = rng.integers(0, classes, n)
    for i, L in enumerate(lengths):
        ids[i, :L] = rng.integers(5, 50, L)
        ids[i, 1] = labels[i] + 1  # the label is written into the input: learnable
        mask[i, :L] = 1
    return {"input_ids": ids, "segment_ids": np.zeros_like(ids), "input_mask": mask, "labels": labels}


def test_losses_match_manual():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 4)
    labels = torch.tensor([[0, -100, 2, 3, -100], [-100, 1, 1, -100, -100]])
    keep = labels != -100
    want = F.cross_entropy(logits[keep], labels[keep])
    assert torch.allclose(T.head_loss("token", logits, {"labels": labels}), want)
    s, e = torch.randn(3, 7), torch.randn(3, 7)
    b = {"start_positions": torch.tensor([0, 3, 6]), "end_positions": torch.tensor([0, 4, 6])}
    want = (F.cross_entropy(s, b["start_positions"]) + F.cross_entropy(e, b["end_positions"])) / 2
    assert torch.allclose(T.head_loss("qa", (s, e), b), want)
    r = torch.randn(4, 1)
    y = torch.randn(4)
    assert torch.allclose(T.head_loss("regression", r, {"labels": y}), ((r[:, 0] - y) ** 2).mean())
    with pytest.raises(ValueError):
        T.head_loss("ranking", r, {})


@pytest.mark.parametrize("batch_size", [1, 5, 64])
def test_predict_trims_padding_and_keeps_order(batch_size):
    torch.manual_seed(0)
    data = _data(23)
    m = BagClassifier()
    got = T.predict(m, data, "classification", batch_size)
    with torch.no_grad():
        want = m(*(torch.from_numpy(data[k]) for k in T.INPUT_KEYS)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    tm = BagClassifier(token=True)
    got = T.predict(tm, data, "token", batch_size)
    assert got.shape == (23, 12, 3)
    with torch.no_grad():
        want = tm(*(torch.from_numpy(data[k]) for k in T.INPUT_KEYS)).numpy()
    valid = data["input_mask"].astype(bool)
    np.testing.assert_allclose(got[valid], want[valid], rtol=1e-6, atol=1e-6)


def test_train_learns_and_keeps_best(tmp_path):
    torch.manual_seed(0)
    train_d, dev_d = _data(256, seed=1), _data(64, seed=2)
    m = BagClassifier()
    cfg = T.FinetuneConfig.preset("demo", batch_size=16, learning_rate=0.05, max_steps=48, eval_every=16)
    res = T.train(m, "classification", train_d, cfg,
                  lambda mod: {"acc": float((T.predict(mod, dev_d, "classification").argmax(-1) == dev_d["labels"]).mean())},
                  "acc", str(tmp_path))
    assert res.steps == 48 and [h["step"] for h in res.history] == [16, 32, 48]
    assert res.best_metric == max(h["acc"] for h in res.history) > 0.9
    # the model holds the best weights, and best/ holds them on disk
    saved = torch.load(tmp_path / "best" / "w.pt")
    assert all(torch.equal(saved[k], v) for k, v in m.state_dict().items())
    assert json.loads((tmp_path / "train_history.json").read_text())[0]["step"] == 16


def test_early_stopping_and_best_restore():
    torch.manual_seed(0)
    m = BagClassifier()
    scores = iter([0.5, 0.7, 0.6, 0.65, 0.9, 0.95])
    snaps = []

    def evaluate(mod):
        snaps.append({k: v.clone() for k, v in mod.state_dict().items()})
        return {"acc": next(scores)}

    cfg = T.FinetuneConfig.preset("demo", batch_size=8, max_steps=60, eval_every=5, patience=2)
    res = T.train(m, "classification", _data(40), cfg, evaluate, "acc")
    # evaluations at 5, 10 (best 0.7), 15, 20 -> two without improvement: stop at step 20
    assert res.stopped_early and res.steps == 20 and res.best_step == 10 and res.best_metric == 0.7
    assert all(torch.equal(snaps[1][k], v) for k, v in m.state_dict().items())


def test_schedule_is_linear_warmup_then_decay():
    m = BagClassifier()
    lrs = []
    cfg = T.FinetuneConfig.preset("demo", batch_size=8, max_steps=10, warmup_proportion=0.2, learning_rate=1.0,
                                  eval_every=100)

    orig = torch.optim.AdamW.step

    def spy(self, *a, **k):
        lrs.append(self.param_groups[0]["lr"])
        return orig(self, *a, **k)

    torch.optim.AdamW.step = spy
    try:
        T.train(m, "classification", _data(40), cfg, lambda mod: {"acc": 0.0}, "acc")
    finally:
        torch.optim.AdamW.step = orig
    # W = 2: steps use 1/2, 2/2, then 1 - (s-2)/8 for s = 2..9
    np.testing.assert_allclose(lrs, [0.5, 1.0] + [1 - (s - 2) / 8 for s in range(2, 10)])


def test_no_decay_groups():
    g = T.adamw_param_groups(BagClassifier(), 0.01)
    assert [p.dim() for p in g[0]["params"]] == [2, 2] and [p.dim() for p in g[1]["params"]] == [1]
    assert g[1]["weight_decay"] == 0.0


def test_config_presets_and_json(tmp_path):
    assert T.FinetuneConfig.preset("squad").max_seq_length == 384
    assert T.FinetuneConfig.resolve("glue", max_steps=7).max_steps == 7
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"preset": "squad", "batch_size": 4}))
    c = T.FinetuneConfig.resolve(str(p))
    assert (c.batch_size, c.learning_rate) == (4, 3e-5)
    p.write_text(json.dumps({"batch_sise": 4}))
    with pytest.raises(BertperfError, match=r"unknown fine-tuning config fields \['batch_sise'\]"):
        T.FinetuneConfig.resolve(str(p))
    with pytest.raises(BertperfError, match="unknown fine-tuning preset"):
        T.FinetuneConfig.resolve("nope")
