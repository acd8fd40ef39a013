"""Exact resume after a real SIGKILL, atomic checkpoints, --keep_last, and the offline fp32 export.

One process, fp32, dropout on (the tiny preset's 0.1): an uninterrupted reference run, then the
same run killed with SIGKILL from outside when its metrics show a randomly picked step, then
`--resume`: every metric from the resumed checkpoint on equals the reference bit for bit (data
position, Adam state, LR schedule and the torch/python/numpy RNG states are restored). Before the
resume the checkpoint directory also gets a half-written save (`.staging/`) and a `latest` that
names an incomplete tag: the resume must use the newest complete checkpoint instead.
Two ranks: the same with `deepspeed --num_gpus 2` (ZeRO-2), the launcher and both ranks killed
together (SIGKILL to the process group, as a node failure or `kill -9` of the job does); the
resumed losses equal the uninterrupted run's within 1e-6 relative.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from tests.train.conftest import REPO, SCRIPT, env, read_metrics, run_pretrain

STEPS, SAVE_EVERY, KEEP = 10, 3, 2


def args_for(ds_config: Path, shards: Path, vocab: Path, out: Path) -> list[str]:
    return ["--deepspeed_config", str(ds_config), "--model_config", "tiny", "--data_dir", str(shards),
            "--vocab", str(vocab), "--log_every", "1", "--output_dir", str(out), "--max_steps", str(STEPS),
            "--save_every", str(SAVE_EVERY), "--keep_last", str(KEEP)]


def check_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


def metric_lines(out: Path) -> list[str]:
    """metrics.csv rows without the timing columns, as the exact text written (float repr)."""
    import csv

    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    keys = ("step", "epoch", "samples", "loss", "mlm_loss", "nsp_loss", "mlm_acc", "nsp_acc", "lr", "skipped")
    return [",".join(r[k] for k in keys) for r in rows]


def kill_at_step(cmd: list[str], out: Path, step: int, timeout: float = 240) -> int:
    """Start `cmd` in its own process group, SIGKILL the whole group (a launcher and its ranks) as
    soon as metrics.csv shows `step`; returns the last step it logged."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "metrics.csv").is_file():
                logged = [ln for ln in (out / "metrics.csv").read_text().splitlines()[1:] if ln]
                if logged and int(logged[-1].split(",")[0]) >= step:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(30)
                    return int(logged[-1].split(",")[0])
            time.sleep(0.05)
        raise AssertionError(f"the run ended or stalled before step {step}: rc {proc.poll()}\n{proc.stderr.read()[-3000:]}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_sigkill_at_a_random_step_then_resume_is_bit_exact(sample_shards, ds_config, vocab_file, tmp_path):
    ref = tmp_path / "reference"
    check_ok(run_pretrain(args_for(ds_config, sample_shards, vocab_file, ref), ranks=None))
    reference = metric_lines(ref)
    assert len(reference) == STEPS
    ckpt = ref / "checkpoints"
    # --keep_last 2: of global_step3, 6, 9 and 10 only the newest two remain; nothing is left staged
    assert sorted(p.name for p in ckpt.iterdir() if p.name.startswith("global_step")) == ["global_step10",
                                                                                          "global_step9"]
    assert (ckpt / "latest").read_text() == "global_step10"
    assert not [p for p in (ckpt / ".staging").iterdir() if p.name.startswith("global_step")]

    kill_step = random.SystemRandom().randint(SAVE_EVERY + 1, STEPS - 1)
    out = tmp_path / "killed"
    logged = kill_at_step([sys.executable, str(SCRIPT), *args_for(ds_config, sample_shards, vocab_file, out)],
                          out, kill_step)
    assert kill_step <= logged < STEPS, (kill_step, logged)
    assert not (out / "summary.json").exists()
    saved = [int(p.name[len("global_step"):]) for p in (out / "checkpoints").iterdir()
             if p.name.startswith("global_step")]
    # the checkpoint of a multiple of SAVE_EVERY may or may not be complete if the kill hit its save
    last_complete = max(s for s in saved if (out / "checkpoints" / f"global_step{s}" / "trainer_state.json").is_file())
    assert last_complete in (logged // SAVE_EVERY * SAVE_EVERY, logged // SAVE_EVERY * SAVE_EVERY - SAVE_EVERY)

    # a crash during a later save: a half-written staging dir, and 'latest' naming an incomplete tag
    ckpt = out / "checkpoints"
    (ckpt / ".staging" / "global_step99").mkdir(parents=True, exist_ok=True)
    (ckpt / ".staging" / "global_step99" / "mp_rank_00_model_states.pt").write_bytes(b"\x80\x02trunc")
    (ckpt / "global_step98").mkdir()
    (ckpt / "global_step98" / "mp_rank_00_model_states.pt").write_bytes(b"\x80\x02trunc")
    (ckpt / "latest").write_text("global_step98")

    resumed = run_pretrain(args_for(ds_config, sample_shards, vocab_file, out) + ["--resume"], ranks=None)
    check_ok(resumed)
    assert f"resumed from global_step{last_complete}: step {last_complete}" in resumed.stdout, resumed.stdout[-2000:]
    assert "newest complete checkpoint" in resumed.stdout + resumed.stderr
    # the CSV keeps the killed run's rows up to the checkpoint, then the resumed rows: all bit-exact
    assert metric_lines(out) == reference, f"kill at step {kill_step} (logged {logged}), resumed at {last_complete}"
    a, b = load_file(ref / "hf" / "model.safetensors"), load_file(out / "hf" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # offline consolidation of a checkpoint to one fp32 HF directory equals the run's own export
    export = tmp_path / "export"
    result = subprocess.run([sys.executable, "-m", "bertperf.train.checkpoint", str(ref), str(export),
                             "--vocab", str(vocab_file)], cwd=REPO, env=env(), capture_output=True, text=True,
                            timeout=120)
    check_ok(result)
    c = load_file(export / "model.safetensors")
    assert c.keys() == a.keys() and all(torch.equal(a[k], c[k]) and c[k].dtype == torch.float32 for k in a)
    assert (export / "vocab.txt").read_bytes() == vocab_file.read_bytes()


def test_two_ranks_sigkill_then_resume_matches_within_1e6(sample_shards, ds_config, vocab_file, tmp_path):
    from tests.train.conftest import VENV_BIN, free_port

    steps, save_every = 8, 3

    def args(out: Path) -> list[str]:
        return ["--deepspeed_config", str(ds_config), "--model_config", "tiny", "--data_dir", str(sample_shards),
                "--vocab", str(vocab_file), "--log_every", "1", "--output_dir", str(out), "--max_steps", str(steps),
                "--save_every", str(save_every)]

    ref = tmp_path / "reference"
    check_ok(run_pretrain(args(ref), ranks=2))
    reference = read_metrics(ref)
    assert [int(r["step"]) for r in reference] == list(range(1, steps + 1))

    kill_step = random.SystemRandom().randint(save_every + 1, steps - 1)
    out = tmp_path / "killed"
    launcher = [str(VENV_BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()), str(SCRIPT)]
    logged = kill_at_step(launcher + args(out), out, kill_step)
    assert kill_step <= logged < steps and not (out / "summary.json").exists()
    resumed = run_pretrain(args(out) + ["--resume"], ranks=2)
    check_ok(resumed)
    start = int(resumed.stdout.split("resumed from global_step")[1].split(":")[0])
    assert start in (logged // save_every * save_every, logged // save_every * save_every - save_every)
    got = read_metrics(out)
    assert [int(r["step"]) for r in got] == list(range(1, steps + 1))
    for a, b in zip(reference[start:], got[start:]):
        for key in ("loss", "mlm_loss", "nsp_loss", "mlm_acc", "nsp_acc", "lr", "samples", "epoch"):
            assert abs(a[key] - b[key]) <= 1e-6 * max(1.0, abs(a[key])), (key, a["step"], a[key], b[key])


def test_find_resume_tag_and_keep_last_on_a_directory(tmp_path):
    """The tag choice and pruning rules on a synthetic checkpoint directory (no DeepSpeed)."""
    from bertperf.train import checkpoint as ckpt

    root = tmp_path / "checkpoints"

    def make(step: int, complete: bool = True) -> None:
        d = root / f"global_step{step}"
        d.mkdir(parents=True)
        (d / "mp_rank_00_model_states.pt").write_bytes(b"x")
        if complete:
            (d / "trainer_state.json").write_text("{}")

    assert ckpt.find_resume_tag(str(root)) is None
    for s in (2, 4, 10):
        make(s)
    make(12, complete=False)
    (root / "latest").write_text("global_step4")
    assert ckpt.find_resume_tag(str(root)) == "global_step4"  # latest wins when complete
    (root / "latest").write_text("global_step12")
    assert ckpt.find_resume_tag(str(root)) == "global_step10"  # incomplete -> newest complete
    os.remove(root / "latest")
    assert ckpt.find_resume_tag(str(root)) == "global_step10"
    assert ckpt.checkpoint_tags(str(root)) == ["global_step2", "global_step4", "global_step10", "global_step12"]

    # a commit moves the staged tag into place, points latest at it, prunes to the newest K
    staged = root / ".staging" / "global_step14"
    staged.mkdir(parents=True)
    (staged / "mp_rank_00_model_states.pt").write_bytes(b"x")
    (staged / "trainer_state.json").write_text("{}")
    ckpt._commit(str(root), "global_step14", keep_last=2)
    # the newest 2 complete tags stay; the incomplete global_step12 (not ours) is left alone
    assert ckpt.checkpoint_tags(str(root)) == ["global_step10", "global_step12", "global_step14"]
    assert (root / "latest").read_text() == "global_step14" and not staged.exists()
    assert list((root / ".staging").iterdir()) == []  # removed tags went through the staging area


def test_rng_state_round_trip():
    """torch, python and numpy RNG states are captured and restored exactly (and survive torch.save)."""
    import io

    import numpy as np

    from bertperf.train.checkpoint import capture_rng_state, restore_rng_state

    torch.manual_seed(3), random.seed(3), np.random.seed(3)
    np.random.standard_normal()  # leave a cached gaussian in numpy's legacy state
    buf = io.BytesIO()
    torch.save(capture_rng_state(), buf)
    expected = (torch.rand(4), random.random(), np.random.standard_normal(3))
    torch.manual_seed(0), random.seed(0), np.random.seed(0)
    buf.seek(0)
    restore_rng_state(torch.load(buf, weights_only=True))
    got = (torch.rand(4), random.random(), np.random.standard_normal(3))
    assert torch.equal(expected[0], got[0]) and expected[1] == got[1] and np.array_equal(expected[2], got[2])
