"""Fixtures for the training tests: real shards made from the Wikipedia sample, a small DeepSpeed config."""
from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def sample_shards(tmp_path_factory, enwiki_bz2, vocab_file) -> Path:
    """Shards of the real sample (105 articles, dupe factor 1: ~5.8k instances, S=128, P=20) in 3 files."""
    from bertperf.data.prepare import main as prepare

    out = tmp_path_factory.mktemp("shards")
    rc = prepare(["--input", str(enwiki_bz2), "--vocab", str(vocab_file), "--output_dir", str(out),
                  "--dupe_factor", "1", "--instances_per_shard", "2000", "--quiet"])
    assert rc == 0
    return out


@pytest.fixture()
def ds_config(tmp_path) -> Path:
    """A small ZeRO-2 fp32 config: micro batch 8 per rank, AdamW lr 1e-3, 2 warmup steps, linear decay."""
    cfg = {
        "train_micro_batch_size_per_gpu": 8,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": 2},
        "gradient_clipping": 1.0,
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "weight_decay": 0.01}},
        "scheduler": {"type": "WarmupLinearDecay", "params": {"warmup_num_steps": 2}},
    }
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(cfg))
    return path
