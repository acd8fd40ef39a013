"""`bertperf finetune {glue,squad,ner,tnews,wikipairs}`: fine-tune a BERT, score it, write predictions.

    bertperf finetune glue  --task mrpc --data_dir glue_data/MRPC --model CKPT --output_dir OUT
    bertperf finetune squad --train_file train-v1.1.json --predict_file dev-v1.1.json --model CKPT --output_dir OUT
    bertperf finetune ner   --train_file train.txt --dev_file dev.txt [--test_file test.txt] --model CKPT --output_dir OUT
    bertperf finetune tnews --data_dir tnews_public --model CKPT --output_dir OUT
    bertperf finetune wikipairs --input enwiki.xml.bz2 --kind order --out DIR    (then: glue --task wnli --data_dir DIR)

`--model` is an HF directory (config.json + weights, e.g. /work/main/.data/minilm), a bertperf
pretraining output (its hf/ or checkpoints/), a Google TF checkpoint (directory with
bert_model.ckpt.* + bert_config.json, or the .ckpt prefix) or, for a randomly initialised model,
a BertConfig preset name / JSON (then `--vocab` is required); see `bertperf.finetune.start`.
The vocab defaults to the vocab.txt that comes with the model.
`--bf16` (bf16 autocast), `--kernel_backend` (default auto: the fused C++ ops on CPU; torch for
the eager reference) and `--deepspeed_config`
(a DeepSpeed engine, ZeRO 0-2, launched by `deepspeed bertperf/finetune.py ...`; see
`bertperf.finetune.ds`) apply to every task.
`--config` is a FinetuneConfig preset (glue, squad, ner, tnews, demo) or JSON; the default is
the command's own preset. `--max_steps` and `--seed` override it.

Outputs in `--output_dir`: `best/` (the best checkpoint, with vocab.txt), `train_history.json`,
`eval_results.json` (dev metrics of the best model and a training summary) and the task's
prediction files: GLUE submission TSVs (CoLA.tsv ... AX.tsv), SQuAD predictions.json /
nbest_predictions.json / null_odds.json, NER dev/test predictions (CoNLL `word gold pred` lines
or CLUENER JSON), TNEWS tnews_predict.json.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from bertperf.finetune.common import FastTokenizer, encode_pairs, load_tokenizer
from bertperf.utils.atomic import atomic_write_json, atomic_write_text
from bertperf.finetune.trainer import FinetuneConfig, predict, train
from bertperf.utils.errors import BertperfError

log = logging.getLogger(__name__)

SUBCOMMANDS = ("glue", "squad", "ner", "tnews", "wikipairs")


@dataclass
class Job:
    """What `run` needs from a task: arrays, how to score dev logits, what to write."""

    head: str  # trainer head kind
    num_labels: int
    train: dict[str, np.ndarray] | None
    dev: dict[str, np.ndarray] | None
    score: Callable[[Any], dict[str, float]] | None  # dev logits -> metrics
    main_metric: str
    write_dev: Callable[[Any, str], list[str]] | None = None  # (dev logits, out_dir) -> files
    tests: list[tuple[dict[str, np.ndarray], Callable[[Any, str], list[str]]]] = field(default_factory=list)
    extra_dev: list[tuple[str, dict[str, np.ndarray], Callable[[Any], dict[str, float]]]] = field(default_factory=list)
    labels: list[str] | None = None  # NER tag list, saved as ner_labels.json with the checkpoint
    notes: dict[str, Any] = field(default_factory=dict)  # input counts (e.g. skipped rows) for eval_results["data"]


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------

def build_model(head: str, spec: str, num_labels: int, vocab_size: int, **overrides: Any):
    """The task model from `--model` (see `bertperf.finetune.start`)."""
    from bertperf.finetune.start import build_model as _build

    return _build(head, spec, num_labels, vocab_size, **overrides)[0]


def _save_model_fn(vocab_file: str, ner_labels: list[str] | None):
    """save_pretrained plus vocab.txt (and the NER tag list), so `best/` is a complete checkpoint."""
    def save(model, path):
        model.save_pretrained(path)
        shutil.copyfile(vocab_file, os.path.join(path, "vocab.txt"))
        if ner_labels:
            atomic_write_json(os.path.join(path, "ner_labels.json"), ner_labels)
    return save


# ---------------------------------------------------------------------------------------------
# Tasks
# ---------------------------------------------------------------------------------------------


def glue_job(a, tok: FastTokenizer, cfg: FinetuneConfig) -> Job:
    from bertperf.finetune import glue
    from bertperf.finetune.metrics import GLUE_MAIN_METRIC, glue_metrics

    task = glue.get_task(a.task)
    if task.name == "ax":
        raise BertperfError("AX has no training data: run --task mnli; its data_dir's ../diagnostic/diagnostic.tsv "
                            "is predicted into AX.tsv when present")
    S = cfg.max_seq_length

    def arrays(examples, labelled=True):
        enc = encode_pairs(tok, [e.text_a for e in examples],
                           None if examples and examples[0].text_b is None else [e.text_b for e in examples], S)
        if labelled:
            enc["labels"] = np.asarray(glue.label_ids(task, examples),
                                       dtype=np.float32 if task.is_regression else np.int64)
        return enc

    def preds_of(logits):
        return logits.reshape(-1) if task.is_regression else logits.argmax(-1)

    def scorer(examples):
        y = np.asarray(glue.label_ids(task, examples))
        return lambda logits: glue_metrics(task.name, preds_of(logits), y)

    head = "regression" if task.is_regression else "classification"
    train_ex = None if a.no_train else glue.read_examples(a.data_dir, task.name, "train")
    dev_ex = glue.read_examples(a.data_dir, task.name, "dev")
    job = Job(head, task.num_labels, None if train_ex is None else arrays(train_ex), arrays(dev_ex),
              scorer(dev_ex), GLUE_MAIN_METRIC[task.name])
    if task.name == "mnli":
        mm = glue.read_examples(a.data_dir, task.name, "dev_mismatched")
        job.extra_dev.append(("mnli-mm", arrays(mm), scorer(mm)))
    for split in task.submission:
        path = glue.split_path(a.data_dir, task, split)
        if os.path.isfile(path):
            ex = glue.read_examples(a.data_dir, task.name, split)
            job.tests.append((arrays(ex, False), _glue_writer(task.name, ex, split, preds_of)))
    ax_path = os.path.join(os.path.dirname(os.path.abspath(a.data_dir)), "diagnostic", "diagnostic.tsv")
    if task.name == "mnli" and os.path.isfile(ax_path):
        ex = glue.read_examples(os.path.dirname(ax_path), "ax", "test")
        job.tests.append((arrays(ex, False), _glue_writer("ax", ex, "test", preds_of)))

    def write_dev(logits, out_dir):
        path = os.path.join(out_dir, f"dev_predictions_{task.name}.tsv")
        lines = ["index\tprediction\tlabel"] + [
            f"{i}\t{_fmt(task, p)}\t{_fmt_label(e.label)}" for i, (p, e) in enumerate(zip(preds_of(logits), dev_ex))]
        atomic_write_text(path, "\n".join(lines) + "\n")
        return [path]
    job.write_dev = write_dev
    return job


def _fmt(task, p) -> str:
    return f"{float(p):.3f}" if task.is_regression else task.labels[int(p)]


def _fmt_label(label) -> str:
    return f"{label:.3f}" if isinstance(label, float) else str(label)


def _glue_writer(task_name, examples, split, preds_of):
    from bertperf.finetune import glue

    return lambda logits, out_dir: [glue.write_submission(out_dir, task_name, examples, preds_of(logits), split)]


def squad_job(a, tok: FastTokenizer, cfg: FinetuneConfig) -> Job:
    from bertperf.finetune import squad

    notes: dict[str, Any] = {}

    def feats(path, training):
        ex = squad.read_squad_examples(path)
        f, stats = squad.create_features(ex, tok, cfg.max_seq_length, cfg.doc_stride, cfg.max_query_length, training)
        log.info("%s: %d examples -> %d features", path, stats.examples, stats.features)
        if training:
            notes.update(train_examples=stats.examples, train_features=stats.features,
                         train_skipped_answer_not_in_context=stats.skipped_bad_answer)
        return ex, f

    train_arrays = None
    if not a.no_train:
        if not a.train_file:
            raise BertperfError("squad: --train_file is required for training (or pass --no_train)")
        _, tf = feats(a.train_file, True)
        train_arrays = squad.features_to_arrays(tf)
    dataset = squad.load_squad_json(a.predict_file)
    v2 = squad.is_v2(dataset) or a.version_2
    ex, pf = feats(a.predict_file, False)
    parr = squad.features_to_arrays(pf)

    def post(logits):
        return squad.postprocess(ex, pf, logits[0], logits[1], cfg.n_best_size, cfg.max_answer_length, v2,
                                 cfg.null_score_diff_threshold)

    has_answers = any(e.answers for e in ex)

    def score(logits):
        preds, _, odds = post(logits)
        if v2:
            return squad.evaluate_v2(dataset, preds, odds)
        return squad.evaluate_v1(dataset, preds)

    def write(logits, out_dir):
        return squad.write_predictions(out_dir, *post(logits))

    return Job("qa", 2, train_arrays, parr if has_answers else None, score if has_answers else None,
               "f1", write_dev=write if has_answers else None,
               tests=[] if has_answers else [(parr, write)], notes=notes)


def ner_job(a, tok: FastTokenizer, cfg: FinetuneConfig) -> Job:
    from bertperf.finetune import ner
    from bertperf.finetune.metrics import entity_scores

    def read(path):
        return ner.read_cluener(path) if path.endswith(".json") else ner.read_conll(path)

    dev = read(a.dev_file)
    train_s = None if a.no_train else read(a.train_file) if a.train_file else None
    if train_s is None and not a.no_train:
        raise BertperfError("ner: --train_file is required for training (or pass --no_train)")
    # train + dev tags (a dev-only tag is never predicted, but must not stop the scoring)
    labels = ner.label_list(train_s + dev) if train_s is not None else _labels_from_checkpoint(a.model)
    l2i = {t: i for i, t in enumerate(labels)}
    S = cfg.max_seq_length
    dev_enc = ner.encode_words(tok, dev, l2i, S)
    cluener = a.dev_file.endswith(".json")

    def tags_of(logits, enc, sents):
        return ner.decode_predictions(logits.argmax(-1), enc.arrays["word_index"], sents, labels)

    def score(logits):
        s = entity_scores([x.tags for x in dev], tags_of(logits, dev_enc, dev))
        return {k: v for k, v in s.items() if k != "per_type"} | {"per_type": s["per_type"]}

    def writer(enc, sents, name):
        def write(logits, out_dir):
            path = os.path.join(out_dir, name + (".json" if cluener else ".txt"))
            fn = ner.write_cluener_predictions if cluener else ner.write_conll_predictions
            fn(path, sents, tags_of(logits, enc, sents))
            return [path]
        return write

    job = Job("token", len(labels), None, dev_enc.arrays, score, "f1", writer(dev_enc, dev, "dev_predictions"))
    if train_s is not None:
        job.train = ner.encode_words(tok, train_s, l2i, S).arrays
    job.labels = labels
    if a.test_file:
        test = read(a.test_file)
        tenc = ner.encode_words(tok, test, None, S)
        job.tests.append((tenc.arrays, writer(tenc, test, "test_predictions")))
    return job


def _labels_from_checkpoint(model_dir: str) -> list[str]:
    import json

    path = os.path.join(model_dir, "ner_labels.json")
    if not os.path.isfile(path):
        raise BertperfError(f"{path} not found: --no_train needs a checkpoint written by `bertperf finetune ner`")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def tnews_job(a, tok: FastTokenizer, cfg: FinetuneConfig) -> Job:
    from bertperf.finetune import tnews
    from bertperf.finetune.metrics import accuracy

    labels = tnews.load_labels(a.data_dir)
    codes = {c: i for i, c in enumerate(labels)}
    S = cfg.max_seq_length

    def arrays(examples, labelled=True):
        enc = encode_pairs(tok, [e.sentence for e in examples], None, S)
        if labelled:
            enc["labels"] = np.asarray([codes[e.label] for e in examples], dtype=np.int64)
        return enc

    path = lambda name: os.path.join(a.data_dir, name)  # noqa: E731
    train_ex = None if a.no_train else tnews.read_tnews(path("train.json"), labels)
    dev_ex = tnews.read_tnews(path("dev.json"), labels)
    y = np.asarray([codes[e.label] for e in dev_ex])
    job = Job("classification", len(labels), None if train_ex is None else arrays(train_ex), arrays(dev_ex),
              lambda logits: {"acc": accuracy(logits.argmax(-1), y)}, "acc")
    if os.path.isfile(path("test.json")):
        test_ex = tnews.read_tnews(path("test.json"), labels)
        job.tests.append((arrays(test_ex, False),
                          lambda logits, out: [tnews.write_predictions(out, test_ex, logits.argmax(-1), labels)]))
    return job


JOBS = {"glue": glue_job, "squad": squad_job, "ner": ner_job, "tnews": tnews_job}


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------


def run(job: Job, model, cfg: FinetuneConfig, out_dir: str, vocab_file: str) -> dict:
    """Train (when job.train), score dev, write every prediction file; returns eval_results."""
    os.makedirs(out_dir, exist_ok=True)
    results: dict[str, Any] = {}
    if job.train is not None:
        results["train"] = train_job(job, model, cfg, out_dir, vocab_file)
    return finish(job, model, cfg, out_dir, results)


def train_job(job: Job, model, cfg: FinetuneConfig, out_dir: str, vocab_file: str, stepper: Any = None,
              shard_eval: bool = False) -> dict:
    """Fine-tune `model` on job.train, picking the best checkpoint on job.dev; returns the
    training summary. Under DeepSpeed (a `stepper` and `shard_eval`) every rank calls it."""
    if not len(job.train["input_ids"]):
        raise BertperfError("the training set is empty")
    if job.score is None:
        raise BertperfError("training needs a labelled dev set to pick the best checkpoint")

    def evaluate(m):
        return _flat(job.score(predict(m, job.dev, job.head, cfg.eval_batch_size, bf16=cfg.bf16, shard=shard_eval)))

    res = train(model, job.head, job.train, cfg, evaluate, job.main_metric, out_dir,
                save=_save_model_fn(vocab_file, job.labels), stepper=stepper)
    return {"steps": res.steps, "seconds": round(res.seconds, 2), "examples": res.train_examples,
            "best_step": res.best_step, f"best_{job.main_metric}": res.best_metric,
            "stopped_early": res.stopped_early}


def finish(job: Job, model, cfg: FinetuneConfig, out_dir: str, results: dict) -> dict:
    """Score dev (and MNLI-mm) with `model`, write dev/test predictions and eval_results.json."""
    import torch

    os.makedirs(out_dir, exist_ok=True)
    head = job.head
    if job.notes:
        results["data"] = dict(job.notes)
    pred = lambda arr: predict(model, arr, head, cfg.eval_batch_size, bf16=cfg.bf16)  # noqa: E731
    with torch.no_grad():
        if job.dev is not None:
            logits = pred(job.dev)
            results["dev"] = job.score(logits)
            if job.write_dev:
                results.setdefault("files", []).extend(job.write_dev(logits, out_dir))
        for name, arr, score in job.extra_dev:
            results[name] = score(pred(arr))
        for arr, write in job.tests:
            results.setdefault("files", []).extend(write(pred(arr), out_dir))
    atomic_write_json(os.path.join(out_dir, "eval_results.json"), results)
    return results


def _flat(metrics: dict) -> dict:
    """Drop nested entries (NER per-type scores) from the history."""
    return {k: v for k, v in metrics.items() if not isinstance(v, dict)}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bertperf finetune", description="Fine-tune a BERT on GLUE, SQuAD, NER or TNEWS.")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp, preset):
        sp.add_argument("--model", required=True, help="start point: an HF directory, a bertperf pretraining output or checkpoint, a Google TF "
                        "checkpoint (directory or .ckpt prefix), or a BertConfig preset/JSON (random init)")
        sp.add_argument("--vocab", help="vocab.txt (default: <model>/vocab.txt)")
        sp.add_argument("--output_dir", required=True)
        sp.add_argument("--config", default=preset, help=f"FinetuneConfig preset or JSON (default {preset})")
        sp.add_argument("--max_steps", type=int, help="train exactly this many steps")
        sp.add_argument("--seed", type=int)
        sp.add_argument("--no_train", action="store_true", help="only score dev and predict test with --model")
        sp.add_argument("--bf16", action="store_true",
                        help="bf16: autocast on CPU (plain run) / DeepSpeed's bf16 mode (with --deepspeed_config)")
        sp.add_argument("--kernel_backend", help="the model's fused-op backend: auto (default: the device's fused kernels), cpu, cuda, triton, "
                        "torch (eager reference)")
        sp.add_argument("--deepspeed_config", help="DeepSpeed JSON (e.g. configs/ds-finetune.json): train with a "
                        "DeepSpeed engine; launch with `deepspeed [--num_gpus N] bertperf/finetune.py ...`")

    g = sub.add_parser("glue", help="a GLUE task (data_dir = the task folder of the GLUE download)")
    g.add_argument("--task", required=True)
    g.add_argument("--data_dir", required=True)
    common(g, "glue")
    s = sub.add_parser("squad", help="SQuAD v1.1 / v2.0")
    s.add_argument("--train_file")
    s.add_argument("--predict_file", required=True)
    s.add_argument("--version_2", action="store_true", help="treat the predict file as v2.0 (detected otherwise)")
    common(s, "squad")
    n = sub.add_parser("ner", help="CoNLL-style (.txt etc.) or CLUENER (.json) NER")
    n.add_argument("--train_file")
    n.add_argument("--dev_file", required=True)
    n.add_argument("--test_file")
    common(n, "ner")
    t = sub.add_parser("tnews", help="CLUE TNEWS (data_dir with train.json, dev.json, test.json)")
    t.add_argument("--data_dir", required=True)
    common(t, "tnews")
    sub.add_parser("wikipairs", help="build a sentence-pair task from Wikipedia text (see its --help)", add_help=False)
    return p


def _drop_local_rank(argv: list[str]) -> list[str]:
    """Remove the `--local_rank=N` (or `--local_rank N`) the deepspeed launcher puts before the
    task name; LOCAL_RANK is in the environment as well."""
    out, skip = [], False
    for i, x in enumerate(argv):
        if skip:
            skip = False
        elif x.startswith("--local_rank="):
            continue
        elif x == "--local_rank":
            skip = True
        else:
            out.append(x)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = _drop_local_rank(sys.argv[1:] if argv is None else list(argv))
    if argv and argv[0] == "wikipairs":
        from bertperf.finetune import wikitask
        return wikitask.main(argv[1:])
    if argv and not argv[0].startswith("-") and argv[0] not in SUBCOMMANDS:
        raise BertperfError(f"unknown fine-tuning task {argv[0]!r}: use one of {', '.join(SUBCOMMANDS)}")
    a = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from bertperf.finetune.start import describe

    overrides = {k: v for k, v in (("max_steps", a.max_steps), ("seed", a.seed), ("kernel_backend", a.kernel_backend))
                 if v is not None}
    if a.bf16:
        overrides["bf16"] = True
    cfg = FinetuneConfig.resolve(a.config, **overrides)
    src = describe(a.model)
    vocab = a.vocab or src.vocab
    if vocab is None:
        raise BertperfError(f"{a.model}: no vocab.txt comes with this model: pass --vocab" if src.kind != "config"
                            else "--vocab is required when --model is a config (random init)")
    if not os.path.isfile(vocab):
        raise BertperfError(f"{vocab}: vocab file not found; pass --vocab with the model's vocab.txt")
    if a.no_train and src.kind == "config":
        raise BertperfError("--no_train needs --model to be a fine-tuned checkpoint")
    if a.no_train and a.deepspeed_config:
        raise BertperfError("--no_train does not use DeepSpeed: drop --deepspeed_config")
    tok = load_tokenizer(vocab)
    job = JOBS[a.command](a, tok, cfg)
    if a.deepspeed_config:
        from bertperf.finetune.ds import run_deepspeed

        results = run_deepspeed(job, a, cfg, vocab, tok.vocab_size)
        if results is None:  # not rank 0
            return 0
    else:
        import torch

        if cfg.num_threads > 0:
            torch.set_num_threads(cfg.num_threads)
        torch.manual_seed(cfg.seed)
        model = build_model(job.head, a.model, job.num_labels, tok.vocab_size, kernel_backend=cfg.kernel_backend)
        results = run(job, model, cfg, a.output_dir, vocab)
    shown = {k: v for k, v in results.items() if k != "files"}
    print(json_line(shown))
    for f in results.get("files", []):
        print(f"wrote {f}")
    return 0


def json_line(obj) -> str:
    import json

    def default(o):
        return float(o) if isinstance(o, (np.floating, np.integer)) else str(o)
    return json.dumps(obj, default=default)


if __name__ == "__main__":
    from bertperf.utils.errors import run_cli

    sys.exit(run_cli(lambda: main(), prog="bertperf finetune"))
