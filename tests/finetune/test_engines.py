"""Fine-tuning paths beyond the plain fp32 run: DeepSpeed (2 ranks, ZeRO-2) against the plain run,
bf16 autocast, the fused CPU kernels, and the start points `--model` accepts (HF directory,
pretraining output, DeepSpeed checkpoint, Google TF checkpoint).

The task: SST-2 layout, label = whether the sentence holds a positive or a negative word, over the
30-token vocab of the TF fixture; the model a 2-layer hidden-64 BERT without dropout (so
that 1 and 2 ranks see the same computation), which learns it within 60 steps."""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bertperf.finetune import cli
from bertperf.utils.errors import BertperfError
from bertperf.train.engine import free_port
from tests.finetune.conftest import write_sentiment_task

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

REPO = Path(__file__).resolve().parents[2]
TF_FIX = REPO / "tests" / "convert" / "fixtures" / "tf_tiny"
VOCAB = TF_FIX / "pretrain" / "vocab.txt"
STEPS, EVAL_EVERY = 60, 20


def _write_task(d: Path, n_train=256, n_dev=64, seed=3) -> Path:
    return write_sentiment_task(d, n_train, n_dev, random.Random(seed),
                                fill="the a film is very movie plot it was and so we".split(),
                                pos=["good", "great", "fun", "liked"], neg=["bad", "awful", "dull", "not"],
                                words=(2, 6))


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """(data_dir, model config JSON, fine-tuning config JSON)."""
    from bertperf.model import BertConfig

    root = tmp_path_factory.mktemp("engines")
    data = _write_task(root / "SST-2")
    model = root / "small.json"
    BertConfig(vocab_size=30, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
               max_position_embeddings=32, hidden_dropout_prob=0.0,
               attention_probs_dropout_prob=0.0).save_json(str(model))
    cfg = root / "ft.json"
    cfg.write_text(json.dumps({"preset": "demo", "batch_size": 16, "max_seq_length": 12, "max_steps": STEPS,
                               "eval_every": EVAL_EVERY, "learning_rate": 3e-3}))
    return data, model, cfg


def _args(task, out, *extra):
    data, model, cfg = task
    return ["glue", "--task", "sst2", "--data_dir", str(data), "--output_dir", str(out), "--model", str(model),
            "--vocab", str(VOCAB), "--config", str(cfg), *extra]


def _history(out):
    return json.loads((out / "train_history.json").read_text())


def _best_weights(out):
    from safetensors.torch import load_file

    return load_file(str(out / "best" / "model.safetensors"))


@pytest.fixture(scope="module")
def plain_run(task, tmp_path_factory):
    out = tmp_path_factory.mktemp("plain") / "out"
    torch.set_num_threads(1)
    assert cli.main(_args(task, out)) == 0
    return out


def test_plain_run_learns(plain_run):
    hist = _history(plain_run)
    assert [h["step"] for h in hist] == [20, 40, 60]
    assert hist[-1]["acc"] == 1.0 and hist[-1]["train_loss"] < 0.5 * hist[0]["train_loss"]


def test_deepspeed_two_ranks_zero2_follows_the_plain_run(task, plain_run, tmp_path):
    """`deepspeed --num_gpus 2 bertperf/finetune.py ... --deepspeed_config configs/ds-finetune.json`
    (ZeRO-2, fp32): each global batch of 16 split 8 + 8 between the ranks, gradients averaged;
    the evaluations, the losses and the best checkpoint match the one-process run up to
    float reduction order."""
    out = tmp_path / "ds"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    deepspeed = Path(sys.executable).with_name("deepspeed")
    cmd = [str(deepspeed), "--num_gpus", "2", "--master_port", str(free_port()), str(REPO / "bertperf" / "finetune.py"),
           *_args(task, out, "--deepspeed_config", str(REPO / "configs" / "ds-finetune.json"))]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((out / "eval_results.json").read_text())
    assert res["deepspeed"] == {"world_size": 2, "zero_stage": 2, "bf16": False, "global_batch": 16}
    ds_hist, plain_hist = _history(out), _history(plain_run)
    assert [h["step"] for h in ds_hist] == [h["step"] for h in plain_hist]
    assert [h["acc"] for h in ds_hist] == [h["acc"] for h in plain_hist]
    np.testing.assert_allclose([h["train_loss"] for h in ds_hist], [h["train_loss"] for h in plain_hist],
                               rtol=1e-4, atol=1e-5)
    ds_w, plain_w = _best_weights(out), _best_weights(plain_run)
    assert set(ds_w) == set(plain_w)
    for k in plain_w:
        torch.testing.assert_close(ds_w[k], plain_w[k], rtol=1e-3, atol=1e-4, msg=k)
    assert res["dev"] == json.loads((plain_run / "eval_results.json").read_text())["dev"]


def test_a_rank_ends_without_interpreter_teardown(tmp_path):
    """After a distributed run the entry points end the process with os._exit
    (bertperf.train.engine.end_process_after_distributed_run): the exit code is kept, output is
    flushed, and no atexit handler (the interpreter teardown) runs. Without a run the call returns
    and teardown happens as usual."""
    code = ("import atexit, sys\n"
            "from bertperf.train import engine\n"
            "atexit.register(lambda: print('teardown'))\n"
            "engine.end_process_after_distributed_run(5)\n"
            "print('still here', end='')\n"
            "engine._distributed_started = True\n"
            "sys.stdout.write(' and flushed')\n"
            "engine.end_process_after_distributed_run(3)\n"
            "print('not reached')\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stdout) == (3, "still here and flushed"), proc.stderr[-2000:]


def test_bf16_autocast_trains(task, tmp_path):
    out = tmp_path / "bf16"
    assert cli.main(_args(task, out, "--bf16")) == 0
    hist = _history(out)
    assert hist[-1]["train_loss"] < 0.5 * hist[0]["train_loss"] and hist[-1]["acc"] >= 0.9


def test_bf16_autocast_runs_the_gemms_in_bf16(task):
    """The flag really switches the matmuls to bf16: logits differ from fp32 by bf16 rounding,
    not more, and not zero."""
    from bertperf.finetune.trainer import predict
    from bertperf.finetune.common import load_tokenizer, encode_pairs
    from bertperf.model import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig.from_json(str(task[1])), num_labels=2)
    arrays = encode_pairs(load_tokenizer(VOCAB), ["the film was good", "we liked it not"], None, 12)
    fp32 = predict(model, arrays, "classification")
    bf16 = predict(model, arrays, "classification", bf16=True)
    assert fp32.dtype == bf16.dtype == np.float32
    diff = np.abs(fp32 - bf16).max()
    assert 0 < diff < 0.05, diff


def test_fused_cpu_kernels_follow_the_torch_run(task, plain_run, tmp_path):
    out = tmp_path / "cpu"
    assert cli.main(_args(task, out, "--kernel_backend", "cpu")) == 0
    np.testing.assert_allclose([h["train_loss"] for h in _history(out)],
                               [h["train_loss"] for h in _history(plain_run)], rtol=1e-3, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Start points
# ---------------------------------------------------------------------------------------------


def test_finetune_from_a_tf_checkpoint(tmp_path):
    """--model is the TF fixture directory (and its .ckpt prefix): the encoder comes from the TF
    variables, the vocab from the checkpoint's folder, the classifier is new."""
    from bertperf.finetune.start import build_model, describe

    data = _write_task(tmp_path / "SST-2", 64, 16)
    pre = TF_FIX / "pretrain"
    src = describe(str(pre))
    assert src.kind == "tf" and src.path == str(pre / "bert_model.ckpt") and src.vocab == str(pre / "vocab.txt")
    assert describe(str(pre / "bert_model.ckpt")).kind == "tf"
    model, _ = build_model("classification", str(pre / "bert_model.ckpt"), 2, 30)
    want = np.load(pre / "expected.npz")["bert|encoder|layer_1|intermediate|dense|kernel"]
    np.testing.assert_array_equal(model.bert.layers[1].ffn_in.weight.detach().numpy(), want.T)
    assert model.loading_info["initialized"] == ["classifier"]
    out = tmp_path / "out"
    assert cli.main(["glue", "--task", "sst2", "--data_dir", str(data), "--output_dir", str(out), "--model", str(pre),
                     "--config", "demo", "--max_steps", "2"]) == 0
    assert (out / "best" / "vocab.txt").read_text() == (pre / "vocab.txt").read_text()


def _pretraining_state(seed=0):
    from bertperf.model import BertConfig, BertForPreTraining

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32)
    return config, BertForPreTraining(config)


def _fake_pretrain_output(root: Path, with_hf: bool, dtype=torch.float32) -> tuple[Path, object]:
    """A bertperf pretraining output as pretrain.py lays it out: checkpoints/latest,
    checkpoints/global_step7/{trainer_state.json, mp_rank_00_model_states.pt} (DeepSpeed's
    module state under "module") and, optionally, hf/ with vocab.txt."""
    config, model = _pretraining_state()
    tag = root / "checkpoints" / "global_step7"
    tag.mkdir(parents=True)
    (root / "checkpoints" / "latest").write_text("global_step7")
    (tag / "trainer_state.json").write_text(json.dumps({"step": 7, "sampler": {}, "model_config": config.to_hf_dict()}))
    torch.save({"module": {k: v.to(dtype) for k, v in model.state_dict().items()},
                "ds_config": {"zero_optimization": {"stage": 2}}}, tag / "mp_rank_00_model_states.pt")
    if with_hf:
        model.save_pretrained(str(root / "hf"))
        shutil.copyfile(VOCAB, root / "hf" / "vocab.txt")
    return root, model


@pytest.mark.parametrize("which", ["output_dir", "hf", "checkpoints", "tag"])
def test_start_from_a_bertperf_pretraining_run(tmp_path, which):
    from bertperf.finetune.start import build_model, describe

    root, pre = _fake_pretrain_output(tmp_path / "run", with_hf=which in ("output_dir", "hf"))
    spec = {"output_dir": root, "hf": root / "hf", "checkpoints": root / "checkpoints",
            "tag": root / "checkpoints" / "global_step7"}[which]
    src = describe(str(spec))
    assert src.kind == ("hf" if which in ("output_dir", "hf") else "ds_checkpoint")
    model, _ = build_model("classification", str(spec), 3, 30)
    for k, v in pre.bert.state_dict().items():
        torch.testing.assert_close(model.bert.state_dict()[k], v, rtol=0, atol=0, msg=k)
    assert model.classifier.weight.shape == (3, 16)


def test_ds_checkpoint_errors(tmp_path):
    from bertperf.finetune.start import describe

    root, _ = _fake_pretrain_output(tmp_path / "run", with_hf=False)
    (root / "checkpoints" / "latest").write_text("global_step9")
    with pytest.raises(BertperfError, match="names checkpoint 'global_step9'"):
        describe(str(root))
    with pytest.raises(BertperfError, match="not a model directory"):
        describe(str(tmp_path))
    (root / "checkpoints" / "latest").write_text("global_step7")
    with pytest.raises(BertperfError, match="no vocab.txt comes with this model"):
        cli.main(["tnews", "--data_dir", str(tmp_path), "--output_dir", str(tmp_path / "o"), "--model", str(root)])


# ---------------------------------------------------------------------------------------------
# DeepSpeed config checks (no launch needed)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ds,world,match", [
    ({"optimizer": {"type": "Adam"}}, 1, "remove \"optimizer\""),
    ({"scheduler": {"type": "WarmupLR"}}, 1, "remove \"scheduler\""),
    ({"zero_optimization": {"stage": 3}}, 1, "supports 0, 1 and 2"),
    ({"fp16": {"enabled": True}}, 1, "fp16 is not supported"),
    ({"train_batch_size": 32, "gradient_accumulation_steps": 2}, 2, "gradient_accumulation_steps is 2"),
    ({}, 3, "does not divide among 3 ranks"),
])
def test_ds_config_refusals(tmp_path, ds, world, match):
    from bertperf.finetune.ds import finetune_ds_config
    from bertperf.finetune.trainer import FinetuneConfig

    path = tmp_path / "ds.json"
    path.write_text(json.dumps(ds))
    with pytest.raises(BertperfError, match=match):
        finetune_ds_config(str(path), FinetuneConfig.preset("demo", batch_size=16), world)


def test_ds_config_fills_batch_clipping_and_bf16(tmp_path):
    from bertperf.finetune.ds import finetune_ds_config
    from bertperf.finetune.trainer import FinetuneConfig

    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 1}}))
    cfg = FinetuneConfig.preset("glue", bf16=True)
    ds, stage = finetune_ds_config(str(path), cfg, 2)
    assert stage == 1 and ds["train_micro_batch_size_per_gpu"] == 16 and ds["train_batch_size"] == 32
    assert ds["gradient_clipping"] == 1.0 and ds["bf16"] == {"enabled": True}
    path.write_text(json.dumps({"train_micro_batch_size_per_gpu": 4, "gradient_clipping": 0.5}))
    cfg = FinetuneConfig.preset("glue")
    ds, stage = finetune_ds_config(str(path), cfg, 2)
    assert stage == 0 and cfg.batch_size == 8 and cfg.max_grad_norm == 0.5 and not cfg.bf16


def test_unknown_task_and_local_rank(tmp_path):
    with pytest.raises(BertperfError, match="unknown fine-tuning task 'glu'"):
        cli.main(["glu", "--task", "rte"])
    assert cli._drop_local_rank(["--local_rank=1", "glue", "--task", "x"]) == ["glue", "--task", "x"]
    assert cli._drop_local_rank(["--local_rank", "0", "glue"]) == ["glue"]


# ---------------------------------------------------------------------------------------------
# Bad input through the CLI: an error naming file and line, or a counted skip
# ---------------------------------------------------------------------------------------------


def test_squad_answer_not_in_context_is_a_counted_skip(tmp_path):
    ctx = "the film was good and the plot was fun"
    qas = [{"id": "ok", "question": "what was fun", "answers": [{"text": "the plot", "answer_start": ctx.index("the plot")}]},
           {"id": "moved", "question": "what was good", "answers": [{"text": "the film", "answer_start": 5}]},
           {"id": "absent", "question": "what was dull", "answers": [{"text": "awful", "answer_start": 0}]}]
    f = tmp_path / "train.json"
    f.write_text(json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": ctx, "qas": qas}]}]}))
    out = tmp_path / "out"
    assert cli.main(["squad", "--train_file", str(f), "--predict_file", str(f), "--output_dir", str(out),
                     "--model", "tiny", "--vocab", str(VOCAB), "--config", "demo", "--max_steps", "1"]) == 0
    res = json.loads((out / "eval_results.json").read_text())
    assert res["data"] == {"train_examples": 3, "train_features": 1, "train_skipped_answer_not_in_context": 2}
    assert set(json.loads((out / "predictions.json").read_text())) == {"ok", "moved", "absent"}


@pytest.mark.parametrize("row,match", [
    ("a good film\t1\textra", r"train.tsv:3: 3 tab-separated columns where task sst2 has 2"),
    ("a good film\t7", r"train.tsv:3: label '7' is not one of \['0', '1'\]"),
])
def test_glue_bad_rows_through_the_cli(tmp_path, row, match):
    d = _write_task(tmp_path / "SST-2", 4, 2)
    lines = (d / "train.tsv").read_text().splitlines()
    lines.insert(2, row)
    (d / "train.tsv").write_text("\n".join(lines) + "\n")
    with pytest.raises(BertperfError, match=match):
        cli.main(["glue", "--task", "sst2", "--data_dir", str(d), "--output_dir", str(tmp_path / "o"),
                  "--model", "tiny", "--vocab", str(VOCAB), "--config", "demo", "--max_steps", "1"])


def test_head_lr_scale_groups():
    """head_lr_scale puts the pooler and the classifier in groups of their own at lr * scale;
    the encoder keeps the base lr; the decay / no-decay split is kept in both."""
    from bertperf.finetune.trainer import adamw_param_groups
    from bertperf.model import BertConfig, BertForSequenceClassification

    model = BertForSequenceClassification(BertConfig.preset("tiny", vocab_size=30), num_labels=2)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = adamw_param_groups(model, 0.01, 1e-4, 10.0)
    heads = {names[id(p)]: (g.get("lr"), g["weight_decay"]) for g in groups for p in g["params"]
             if g.get("lr") is not None}
    assert heads == {"bert.pooler.weight": (1e-3, 0.01), "classifier.weight": (1e-3, 0.01),
                     "bert.pooler.bias": (1e-3, 0.0), "classifier.bias": (1e-3, 0.0)}
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    opt = torch.optim.AdamW(groups, lr=1e-4)
    assert sorted({g["lr"] for g in opt.param_groups}) == [1e-4, 1e-3]
    assert len(adamw_param_groups(model, 0.01)) == 2
