"""End-to-end runs of bertperf/pretrain.py on shards of the real Wikipedia sample.

- 2 ranks, ZeRO-2, through the deepspeed launcher: the loss falls, a checkpoint and an HF export
  are written, and a run resumed from the mid-run checkpoint continues at the next step with
  exactly the same metrics as the uninterrupted run (same data position, optimizer, lr, RNG).
- One process without a launcher (bf16 + ZeRO-2): the export consolidates the fp32 masters.
- Bad inputs end with exit code 2 and one line naming the file and the problem.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import pytest
import torch

from tests.train.conftest import read_metrics, run_pretrain


def common_args(ds_config: Path, shards: Path, vocab: Path) -> list[str]:
    return ["--deepspeed_config", str(ds_config), "--model_config", "tiny", "--data_dir", str(shards),
            "--vocab", str(vocab), "--log_every", "1"]


def check_ok(result) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    assert "Traceback" not in result.stderr


def load_hf_export(path: Path):
    import transformers

    model, info = transformers.BertForPreTraining.from_pretrained(str(path), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model


def test_two_ranks_zero2_loss_falls_checkpoint_export_and_exact_resume(sample_shards, ds_config, vocab_file,
                                                                      tmp_path):
    steps, mid = 24, 16
    out = tmp_path / "run"
    result = run_pretrain(common_args(ds_config, sample_shards, vocab_file)
                          + ["--output_dir", str(out), "--max_steps", str(steps), "--save_every", str(mid)], ranks=2)
    check_ok(result)
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    assert [r["samples"] for r in rows] == [16 * s for s in range(1, steps + 1)]  # 8 per rank x 2 ranks
    first = sum(r["loss"] for r in rows[:4]) / 4
    last = sum(r["loss"] for r in rows[-4:]) / 4
    assert last < first - 0.5, (first, last)  # from ~10.9 (uniform over 30522 words + ln 2) it drops fast
    assert all(r["seq_per_s"] > 0 and r["tflops"] > 0 for r in rows)

    ckpt = out / "checkpoints"
    assert (ckpt / "latest").read_text().strip() == f"global_step{steps}"
    for tag in (f"global_step{mid}", f"global_step{steps}"):
        names = {p.name for p in (ckpt / tag).iterdir()}
        assert {"mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt",
                "zero_pp_rank_1_mp_rank_00_optim_states.pt", "trainer_state.json",
                "rng_rank0.pt", "rng_rank1.pt"} <= names, names
    assert (out / "tensorboard").is_dir() and any((out / "tensorboard").iterdir())
    hf = load_hf_export(out / "hf")
    assert (out / "hf" / "vocab.txt").read_bytes() == vocab_file.read_bytes()
    # the export holds the trained weights: those of the final checkpoint's module
    states = torch.load(ckpt / f"global_step{steps}" / "mp_rank_00_model_states.pt", weights_only=False)["module"]
    assert torch.equal(hf.bert.embeddings.word_embeddings.weight, states["bert.embeddings.word.weight"])

    # resume from the mid-run checkpoint in a fresh directory: steps continue from mid + 1 and every
    # metric equals the uninterrupted run's (data position, optimizer, lr schedule and RNG restored)
    out2 = tmp_path / "resumed"
    (out2 / "checkpoints").mkdir(parents=True)
    shutil.copytree(ckpt / f"global_step{mid}", out2 / "checkpoints" / f"global_step{mid}")
    (out2 / "checkpoints" / "latest").write_text(f"global_step{mid}")
    result = run_pretrain(common_args(ds_config, sample_shards, vocab_file)
                          + ["--output_dir", str(out2), "--max_steps", str(steps), "--resume"], ranks=2)
    check_ok(result)
    assert f"resumed from global_step{mid}: step {mid}" in result.stdout
    resumed = read_metrics(out2)
    assert [r["step"] for r in resumed] == list(range(mid + 1, steps + 1))
    keys = ("step", "epoch", "samples", "loss", "mlm_loss", "nsp_loss", "mlm_acc", "nsp_acc", "lr")
    assert [{k: r[k] for k in keys} for r in resumed] == [{k: r[k] for k in keys} for r in rows[mid:]]


def test_single_process_bf16_exports_fp32_masters(sample_shards, ds_config, vocab_file, tmp_path):
    cfg = ds_config.read_text().replace('"gradient_clipping"', '"bf16": {"enabled": true}, "gradient_clipping"')
    ds_config.write_text(cfg)
    out = tmp_path / "run"
    result = run_pretrain(common_args(ds_config, sample_shards, vocab_file)
                          + ["--output_dir", str(out), "--max_steps", "3", "--log_every", "2"], ranks=None)
    check_ok(result)
    assert [r["step"] for r in read_metrics(out)] == [2, 3]
    assert [r["samples"] for r in read_metrics(out)] == [16, 24]  # one rank x 8
    hf = load_hf_export(out / "hf")
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    masters = get_fp32_state_dict_from_zero_checkpoint(str(out / "checkpoints"), tag="global_step3")
    assert hf.bert.embeddings.word_embeddings.weight.dtype == torch.float32
    assert torch.equal(hf.bert.embeddings.word_embeddings.weight, masters["bert.embeddings.word.weight"])
    # the export holds fp32 masters, not the bf16 copies the module trained with
    assert any(not torch.equal(v, v.bfloat16().float()) for v in masters.values())


def test_init_from_an_hf_directory(sample_shards, ds_config, vocab_file, tmp_path):
    """--init_from loads the weights: with lr 0 the export is exactly the starting model."""
    from bertperf.model import BertConfig, BertForPreTraining

    torch.manual_seed(7)
    start = BertForPreTraining(BertConfig.preset("tiny"))
    start.save_pretrained(tmp_path / "start")
    ds_config.write_text(ds_config.read_text().replace('"lr": 0.001', '"lr": 0.0'))
    out = tmp_path / "run"
    result = run_pretrain(common_args(ds_config, sample_shards, vocab_file)
                          + ["--output_dir", str(out), "--max_steps", "1", "--init_from", str(tmp_path / "start")],
                          ranks=None)
    check_ok(result)
    exported = BertForPreTraining.from_pretrained(out / "hf").state_dict()
    for name, value in start.state_dict().items():
        assert torch.equal(exported[name], value), name


# ---------------------------------------------------------------------------------------------- bad inputs


def _one_error_line(result, *needles: str) -> str:
    assert result.returncode == 2, f"exit {result.returncode}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("pretrain.py: error: "), line
    for needle in needles:
        assert needle in line, (needle, line)
    return line


@pytest.fixture()
def good_args(sample_shards, ds_config, vocab_file, tmp_path) -> dict[str, str]:
    return {"--deepspeed_config": str(ds_config), "--model_config": "tiny", "--data_dir": str(sample_shards),
            "--output_dir": str(tmp_path / "out"), "--max_steps": "2", "--vocab": str(vocab_file)}


def flat(args: dict[str, str]) -> list[str]:
    return [x for kv in args.items() for x in kv]


def test_shard_missing_a_dataset(good_args, sample_shards, tmp_path):
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    shard = bad_dir / "shard_00000.hdf5"
    shutil.copyfile(sorted(sample_shards.glob("*.hdf5"))[0], shard)
    with h5py.File(shard, "a") as f:
        del f["masked_lm_ids"]
    result = run_pretrain(flat({**good_args, "--data_dir": str(bad_dir)}), ranks=None)
    _one_error_line(result, str(shard), "masked_lm_ids", "missing")


def test_ids_beyond_the_vocab(good_args, vocab_file, tmp_path):
    small = tmp_path / "vocab1000.txt"
    small.write_text("".join(line + "\n" for line in vocab_file.read_text().splitlines()[:1000]))
    result = run_pretrain(flat({**good_args, "--vocab": str(small)}), ranks=None)
    _one_error_line(result, "shard_00000", ">= vocab size 1000")


def test_bad_deepspeed_json(good_args, tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text('{"train_micro_batch_size_per_gpu": 8,\n "zero_optimization": {"stage": 2}')
    result = run_pretrain(flat({**good_args, "--deepspeed_config": str(bad)}), ranks=None)
    _one_error_line(result, str(bad), "not valid JSON")


def test_unknown_model_config(good_args):
    result = run_pretrain(flat({**good_args, "--model_config": "huge"}), ranks=None)
    _one_error_line(result, "'huge'", "preset")


def test_resume_without_a_checkpoint(good_args, tmp_path):
    result = run_pretrain(flat(good_args) + ["--resume"], ranks=None)
    _one_error_line(result, str(tmp_path / "out" / "checkpoints"), "no checkpoint")


def test_bad_input_under_the_launcher_stops_every_rank_with_one_message(good_args, tmp_path):
    bad = tmp_path / "opt.json"
    bad.write_text('{"train_micro_batch_size_per_gpu": 8, "optimizer": {"type": "Adagrad"}}')
    result = run_pretrain(flat({**good_args, "--deepspeed_config": str(bad)}), ranks=2, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    ours = [ln for ln in (result.stdout + result.stderr).splitlines() if ln.startswith("pretrain.py: error:")]
    assert len(ours) == 1 and str(bad) in ours[0] and "optimizer.type 'Adagrad'" in ours[0], ours
    assert "Traceback" not in result.stderr
