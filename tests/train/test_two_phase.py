"""Two-phase pre-training: phase 2 (longer sequences) starts from phase 1's checkpoint with its own
optimizer and LR schedule, as NVIDIA's recipe does; and the bundled recipes follow that recipe.

Tiny model with dropout 0 (so a forward pass is deterministic), LAMB, one process. Phase 1: S=128
shards, 3 steps. Phase 2: S=256 shards, `--init_from <phase-1 OUTPUT_DIR>` (the checkpoint, not its
hf/ export), another lr and warmup, `--checkpoint_activations`. Checks: phase 2's first loss equals
the loss that phase 1's final weights give on phase 2's first batch (computed here, in-process),
its steps count from 1, and its lr column is phase 2's own schedule from step 0.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.train.conftest import REPO, read_metrics, run_pretrain

SEED = 12345


@pytest.fixture(scope="module")
def long_shards(tmp_path_factory, enwiki_bz2, vocab_file) -> Path:
    from bertperf.data.prepare import main as prepare

    out = tmp_path_factory.mktemp("shards256")
    assert prepare(["--input", str(enwiki_bz2), "--vocab", str(vocab_file), "--output_dir", str(out),
                    "--max_seq_length", "256", "--max_predictions_per_seq", "40", "--dupe_factor", "1",
                    "--quiet"]) == 0
    return out


def lamb_config(path: Path, lr: float, warmup: int, total: int) -> Path:
    path.write_text(json.dumps({
        "train_micro_batch_size_per_gpu": 4, "zero_optimization": {"stage": 0},
        "optimizer": {"type": "Lamb", "params": {"lr": lr, "weight_decay": 0.01, "max_grad_norm": 1.0}},
        "scheduler": {"type": "WarmupPolyDecay",
                      "params": {"warmup_num_steps": warmup, "total_num_steps": total, "degree": 0.5}}}))
    return path


def test_phase2_starts_from_phase1_checkpoint_with_its_own_schedule(sample_shards, long_shards, vocab_file,
                                                                     tmp_path):
    from bertperf.data.loader import PretrainingDataset
    from bertperf.data.shards import find_shards
    from bertperf.model import BertConfig, BertForPreTraining
    from bertperf.optim.schedules import WarmupDecaySchedule
    from bertperf.train.sampler import DistributedShuffleSampler

    model_cfg = tmp_path / "tiny-nodropout.json"
    BertConfig.preset("tiny", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).save_json(model_cfg)
    common = ["--model_config", str(model_cfg), "--vocab", str(vocab_file), "--log_every", "1", "--seed", str(SEED)]
    p1, p2 = tmp_path / "phase1", tmp_path / "phase2"
    r1 = run_pretrain(common + ["--deepspeed_config", str(lamb_config(tmp_path / "p1.json", 6e-3, 2, 10)),
                                "--data_dir", str(sample_shards), "--output_dir", str(p1), "--max_steps", "3"],
                      ranks=None)
    assert r1.returncode == 0, r1.stderr[-3000:]
    p2_lr, p2_warmup, p2_total = 4e-3, 3, 8
    r2 = run_pretrain(common + ["--deepspeed_config", str(lamb_config(tmp_path / "p2.json", p2_lr, p2_warmup, p2_total)),
                                "--data_dir", str(long_shards), "--output_dir", str(p2), "--max_steps", "2",
                                "--init_from", str(p1), "--checkpoint_activations"], ranks=None)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert f"starting from the weights in {p1 / 'checkpoints' / 'global_step3'}" in r2.stdout
    assert "activation checkpointing: 2 encoder layers" in r2.stdout
    rows = read_metrics(p2)
    assert [r["step"] for r in rows] == [1, 2]  # a fresh run: its own step count, optimizer and schedule
    schedule = WarmupDecaySchedule(total_steps=p2_total, warmup_steps=p2_warmup, decay="poly", power=0.5)
    # the lr logged after step s is the one step s+1 will use: factor(s) of phase 2's own schedule
    assert [r["lr"] for r in rows] == pytest.approx([p2_lr * schedule.factor(s) for s in (1, 2)], rel=1e-12)

    # phase 2's first loss is what phase 1's final weights give on phase 2's first batch (S=256)
    model = BertForPreTraining.from_pretrained(p1 / "hf")
    dataset = PretrainingDataset(find_shards(str(long_shards)), vocab_size=model.config.vocab_size)
    assert dataset.seq_length == 256
    first = list(zip(range(4), iter(DistributedShuffleSampler(len(dataset), 0, 1, SEED))))
    batch = torch.utils.data.default_collate([dataset[i] for _, i in first])
    model.train()
    with torch.no_grad():
        expected = model(**batch).loss.item()
    assert rows[0]["loss"] == pytest.approx(expected, rel=1e-6, abs=0)
    # and not what a fresh model gives (the init really came from phase 1)
    torch.manual_seed(SEED)
    fresh = BertForPreTraining(model.config)
    with torch.no_grad():
        assert abs(fresh(**batch).loss.item() - expected) > 1e-3


@pytest.mark.parametrize("size,micro1,micro2", [("large", 64, 16), ("base", 128, 32)])
def test_bundled_recipes(size, micro1, micro2):
    from bertperf.train.ds_config import load_train_setup

    suffix = "" if size == "large" else "-base"
    p1 = load_train_setup(str(REPO / "configs" / f"ds-phase1{suffix}.json"), 8, max_steps=7038)
    p2 = load_train_setup(str(REPO / "configs" / f"ds-phase2{suffix}.json"), 8, max_steps=1563)
    assert (p1.global_batch, p1.micro_batch, p1.optimizer["type"], p1.optimizer["params"]["lr"]) == (65536, micro1, "Lamb", 6e-3)
    assert (p1.schedule.total_steps, p1.schedule.warmup_steps, p1.schedule.power) == (7038, 2001, 0.5)
    assert (p2.global_batch, p2.micro_batch, p2.optimizer["type"], p2.optimizer["params"]["lr"]) == (32768, micro2, "Lamb", 4e-3)
    assert (p2.schedule.total_steps, p2.schedule.warmup_steps, p2.schedule.power) == (1563, 200, 0.5)
    for setup in (p1, p2):
        assert setup.zero_stage == 1 and setup.bf16 and setup.ds_config["zero_allow_untested_optimizer"] is True
