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


# --- Running bertperf/pretrain.py as a subprocess: under the deepspeed launcher or as one process.

import csv
import os
import subprocess
import sys
from pathlib import Path

from bertperf.train.engine import free_port  # noqa: F401  (the tests here import it from this module)

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
SCRIPT = REPO / "bertperf" / "pretrain.py"



def env() -> dict[str, str]:
    e = dict(os.environ)
    e.update(HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore", PATH=f"{VENV_BIN}{os.pathsep}{e.get('PATH', '')}",
             TORCH_EXTENSIONS_DIR=str(REPO / ".cache" / "torch_extensions"),
             OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    e.pop("OMP_NUM_THREADS", None)
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        e.pop(var, None)
    return e


def run_pretrain(args: list[str], ranks: int | None, timeout: float = 240) -> subprocess.CompletedProcess:
    """`deepspeed --num_gpus ranks bertperf/pretrain.py ARGS`, or `python bertperf/pretrain.py ARGS` for None."""
    if ranks is None:
        cmd = [sys.executable, str(SCRIPT), *args]
    else:
        cmd = [str(VENV_BIN / "deepspeed"), "--num_gpus", str(ranks), "--master_port", str(free_port()),
               str(SCRIPT), *args]
    return subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=timeout)


def read_metrics(output_dir: Path) -> list[dict[str, float]]:
    with open(output_dir / "metrics.csv", newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
