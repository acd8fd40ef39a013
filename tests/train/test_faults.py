"""Faults: a rank killed mid-run, NaN/Inf losses (skipped, counted, K in a row abort), bad inputs.

The NaN/Inf cases use the one test-only hook, BERTPERF_TEST_BAD_LOSS (bertperf.train.faults): the
loss of the chosen step is multiplied by NaN or Inf before the backward pass, so its gradients are
non-finite too; a skipped step must leave weights and optimizer state exactly unchanged.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import torch

from tests.train.conftest import REPO, VENV_BIN, SCRIPT, env, free_port, read_metrics, run_pretrain


def base_args(ds_config: Path, shards: Path, vocab: Path, out: Path, steps: int) -> list[str]:
    return ["--deepspeed_config", str(ds_config), "--model_config", "tiny", "--data_dir", str(shards),
            "--vocab", str(vocab), "--log_every", "1", "--output_dir", str(out), "--max_steps", str(steps)]


def run_with_env(args: list[str], ranks: int | None, extra: dict[str, str], timeout: float = 240):
    import sys

    if ranks is None:
        cmd = [sys.executable, str(SCRIPT), *args]
    else:
        cmd = [str(VENV_BIN / "deepspeed"), "--num_gpus", str(ranks), "--master_port", str(free_port()),
               str(SCRIPT), *args]
    return subprocess.run(cmd, cwd=REPO, env={**env(), **extra}, capture_output=True, text=True, timeout=timeout)


def module_and_optimizer(ckpt: Path, tag: str) -> tuple[dict, dict]:
    states = torch.load(ckpt / tag / "mp_rank_00_model_states.pt", weights_only=False)
    optim = torch.load(ckpt / tag / "zero_pp_rank_0_mp_rank_00_optim_states.pt", weights_only=False)
    return states["module"], optim["optimizer_state_dict"]


def tensors_equal(a, b) -> bool:
    """Deep, exact equality of nested dicts/lists of tensors and plain values."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(tensors_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(tensors_equal(x, y) for x, y in zip(a, b))
    if torch.is_tensor(a):
        return torch.equal(a, b)
    return a == b


def test_nan_and_inf_steps_are_skipped_and_counted(sample_shards, ds_config, vocab_file, tmp_path):
    out = tmp_path / "run"
    result = run_with_env(base_args(ds_config, sample_shards, vocab_file, out, 6)
                          + ["--save_every", "2", "--keep_last", "0"], None,
                          {"BERTPERF_TEST_BAD_LOSS": "3,4=inf"})
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert math.isnan(rows[2]["loss"]) and math.isnan(rows[3]["loss"])  # whole window non-finite
    assert [r["skipped"] for r in rows] == [0, 0, 1, 2, 2, 2]
    assert all(math.isfinite(r["loss"]) for r in rows[:2] + rows[4:])
    assert [r["samples"] for r in rows] == [8 * s for s in range(1, 7)]  # the data position still advances
    # the LR schedule (warmup 2, linear decay to 0 at step 6; the lr logged after step s is factor(s))
    # does not advance on a skipped step: after step 5 it is factor(3), after step 6 factor(4)
    lrs = [1e-3 * f for f in (1.0, 1.0, 1.0, 1.0, 0.75, 0.5)]
    assert [r["lr"] for r in rows] == pytest.approx(lrs, rel=1e-12)
    assert json.loads((out / "summary.json").read_text())["skipped_steps"] == 2
    ckpt = out / "checkpoints"
    m2, o2 = module_and_optimizer(ckpt, "global_step2")
    m4, o4 = module_and_optimizer(ckpt, "global_step4")
    m6, _ = module_and_optimizer(ckpt, "global_step6")
    assert tensors_equal(m2, m4), "a skipped step changed the weights"
    for key in ("base_optimizer_state", "single_partition_of_fp32_groups"):  # Adam moments/step, fp32 masters
        assert tensors_equal(o2[key], o4[key]), f"a skipped step changed the optimizer's {key}"
    assert not tensors_equal(m4, m6) and all(torch.isfinite(v).all() for v in m6.values())
    assert "optimizer step skipped" in result.stdout + result.stderr


def test_bad_steps_in_a_row_abort_on_every_rank_with_one_message(sample_shards, ds_config, vocab_file, tmp_path):
    """Rank 1 alone sees the NaNs: both ranks skip (the decision is all-reduced) and stop together."""
    out = tmp_path / "run"
    result = run_with_env(base_args(ds_config, sample_shards, vocab_file, out, 8) + ["--max_bad_steps", "2"], 2,
                          {"BERTPERF_TEST_BAD_LOSS": "3@1,4=inf@1"})
    assert result.returncode != 0
    text = result.stdout + result.stderr
    ours = [ln for ln in text.splitlines() if "pretrain.py: error:" in ln]
    assert len(ours) == 1, text[-3000:]
    assert "NaN or Inf for 2 steps in a row (steps 3-4; --max_bad_steps 2)" in ours[0]
    assert [r["skipped"] for r in read_metrics(out)] == [0, 0, 1]  # steps 1-3 logged; step 4 aborted
    assert "Traceback" not in text


def test_killed_rank_stops_the_job_naming_it(sample_shards, ds_config, vocab_file, tmp_path):
    out = tmp_path / "run"
    cmd = [str(VENV_BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()), str(SCRIPT),
           *base_args(ds_config, sample_shards, vocab_file, out, 10_000)]
    launcher = subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline:
            if (out / "metrics.csv").is_file() and len((out / "metrics.csv").read_text().splitlines()) >= 3:
                break
            assert launcher.poll() is None, launcher.stdout.read()[-3000:]
            time.sleep(0.2)
        else:
            raise AssertionError("training did not reach step 2")
        rank1 = [p for p in psutil.Process(launcher.pid).children(recursive=True)
                 if "--local_rank=1" in p.cmdline()]
        assert len(rank1) == 1, [p.cmdline() for p in psutil.Process(launcher.pid).children(recursive=True)]
        killed_pid = rank1[0].pid
        t0 = time.monotonic()
        os.kill(killed_pid, signal.SIGKILL)
        output, _ = launcher.communicate(timeout=90)
        elapsed = time.monotonic() - t0
    finally:
        if launcher.poll() is None:
            for p in psutil.Process(launcher.pid).children(recursive=True):
                p.kill()
            launcher.kill()
            launcher.wait()
    assert launcher.returncode != 0
    assert elapsed < 60, elapsed
    named = [ln for ln in output.splitlines() if f"rank 1 (pid {killed_pid}" in ln and "exited unexpectedly" in ln]
    assert named, output[-3000:]
    print(f"rank 1 SIGKILLed: job exited with {launcher.returncode} after {elapsed:.1f} s: {named[0]}")


# ---------------------------------------------------------------------------------------------- bad inputs


def prepare(argv: list[str]):
    """pretrain.prepare_run on parsed argv as rank 0 of 1 (no process, no torch.distributed)."""
    from bertperf.pretrain import build_parser, prepare_run
    from bertperf.train.engine import Placement

    return prepare_run(build_parser().parse_args(argv), Placement(0, 1, 0, 1))


@pytest.fixture()
def good(sample_shards, ds_config, vocab_file, tmp_path) -> dict[str, str]:
    return {"--deepspeed_config": str(ds_config), "--model_config": "tiny", "--data_dir": str(sample_shards),
            "--output_dir": str(tmp_path / "out"), "--max_steps": "2", "--vocab": str(vocab_file)}


def flat(args: dict[str, str]) -> list[str]:
    return [x for kv in args.items() for x in kv]


def error_of(argv: list[str]) -> str:
    from bertperf.utils.errors import BertperfError

    with pytest.raises(BertperfError) as info:
        prepare(argv)
    return str(info.value)


def hf_config(**fields) -> dict:
    """The tiny preset as an HF config.json dict, with `fields` changed (no validation here)."""
    from bertperf.model import BertConfig

    return {**BertConfig.preset("tiny").to_hf_dict(), **fields}


def test_good_inputs_pass(good):
    run = prepare(flat(good))
    assert run.config.vocab_size == 30522 and run.dataset.seq_length == 128


def test_bad_model_config_file(good, tmp_path):
    cfg = tmp_path / "model.json"
    cfg.write_text(json.dumps(hf_config(hidden_size=130, num_attention_heads=4)))
    msg = error_of(flat({**good, "--model_config": str(cfg)}))
    assert str(cfg) in msg and "130" in msg
    cfg.write_text("{not json")
    assert str(cfg) in error_of(flat({**good, "--model_config": str(cfg)}))


def test_model_config_vocab_differs_from_the_vocab_file(good, tmp_path):
    cfg = tmp_path / "model.json"
    cfg.write_text(json.dumps(hf_config(vocab_size=30000)))
    msg = error_of(flat({**good, "--model_config": str(cfg)}))
    assert "vocab_size 30000" in msg and "30522" in msg


@pytest.mark.parametrize("case", ["missing", "empty", "not_hdf5"])
def test_bad_shard_directory(good, tmp_path, case):
    d = tmp_path / case
    if case != "missing":
        d.mkdir()
    if case == "not_hdf5":
        (d / "shard_00000.hdf5").write_bytes(b"this is not an HDF5 file")
    msg = error_of(flat({**good, "--data_dir": str(d)}))
    assert str(d) in msg


def test_sequence_longer_than_the_model_allows(good, tmp_path):
    cfg = tmp_path / "model.json"
    cfg.write_text(json.dumps(hf_config(max_position_embeddings=64)))
    msg = error_of(flat({**good, "--model_config": str(cfg)}))
    assert "sequence length 128" in msg and "max_position_embeddings 64" in msg


def test_bad_flags(good):
    assert "--max_bad_steps must be >= 1" in error_of(flat(good) + ["--max_bad_steps", "0"])
    assert "--keep_last must be >= 0" in error_of(flat(good) + ["--keep_last", "-1"])
    assert "--dist_timeout" in error_of(flat(good) + ["--dist_timeout", "0"])


def test_fresh_start_over_existing_checkpoints_is_refused(good, tmp_path):
    ckpt = tmp_path / "out" / "checkpoints"
    (ckpt / "global_step4").mkdir(parents=True)
    (ckpt / "latest").write_text("global_step4")
    msg = error_of(flat(good))
    assert str(ckpt) in msg and "global_step4" in msg and "--resume" in msg


def test_init_from_mismatch_and_missing(good, tmp_path):
    from bertperf.model import BertConfig, BertForPreTraining

    assert "--init_from needs a directory" in error_of(flat({**good, "--init_from": str(tmp_path / "nope")}))
    BertForPreTraining(BertConfig.preset("tiny", hidden_size=64, num_attention_heads=2)).save_pretrained(tmp_path / "m")
    msg = error_of(flat({**good, "--init_from": str(tmp_path / "m")}))
    assert "hidden_size=64" in msg
    (tmp_path / "empty").mkdir()
    assert "no bertperf checkpoint" in error_of(flat({**good, "--init_from": str(tmp_path / "empty")}))


def test_injection_spec_is_parsed_strictly():
    from bertperf.train.faults import injected_bad_losses
    from bertperf.utils.errors import BertperfError

    spec = {"BERTPERF_TEST_BAD_LOSS": "3, 5=inf@1 ,7=nan@0"}
    got0, got1 = injected_bad_losses(0, spec), injected_bad_losses(1, spec)
    assert set(got0) == {3, 7} and all(math.isnan(v) for v in got0.values())
    assert got1 == {5: math.inf}
    assert injected_bad_losses(0, {}) == {}
    for bad in ("x", "3=2.0", "3@r"):
        with pytest.raises(BertperfError):
            injected_bad_losses(0, {"BERTPERF_TEST_BAD_LOSS": bad})
