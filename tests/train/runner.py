"""Running bertperf/pretrain.py as a subprocess: under the deepspeed launcher or as one process."""
from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
SCRIPT = REPO / "bertperf" / "pretrain.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
