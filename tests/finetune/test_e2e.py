"""`bertperf finetune ...` end to end on tiny files, with a tiny randomly initialised BERT:
the pipeline runs and writes metrics and prediction files of the right format; on a
learnable synthetic task the loop really learns, and the saved best checkpoint reproduces
its dev score."""
from __future__ import annotations

import json
import random

import pytest

from bertperf.finetune import cli, glue
from tests.finetune.conftest import write_glue, write_sentiment_task

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

TINY = ["--model", "tiny", "--config", "demo", "--max_steps", "3"]


def _run(args, vocab_file):
    return cli.main(args + ["--vocab", str(vocab_file)])


def _results(out):
    return json.loads((out / "eval_results.json").read_text())


def _check_checkpoint(out):
    best = out / "best"
    assert (best / "config.json").is_file() and (best / "vocab.txt").is_file()
    hist = json.loads((out / "train_history.json").read_text())
    assert hist and all("step" in h and "train_loss" in h for h in hist)


@pytest.mark.parametrize("task,folder,metrics,files", [
    ("mrpc", "MRPC", {"acc", "f1", "acc_and_f1"}, ["MRPC.tsv"]),
    ("stsb", "STS-B", {"pearson", "spearmanr", "corr"}, ["STS-B.tsv"]),
    ("mnli", "MNLI", {"acc"}, ["MNLI-m.tsv", "MNLI-mm.tsv", "AX.tsv"]),
    ("cola", "CoLA", {"mcc"}, ["CoLA.tsv"]),
])
def test_glue_end_to_end(tmp_path, vocab_file, task, folder, metrics, files):
    root = write_glue(tmp_path / "glue")
    out = tmp_path / "out"
    assert _run(["glue", "--task", task, "--data_dir", str(root / folder), "--output_dir", str(out)] + TINY,
                vocab_file) == 0
    res = _results(out)
    assert metrics <= set(res["dev"]) and res["train"]["steps"] == 3
    if task == "mnli":
        assert "acc" in res["mnli-mm"]
    _check_checkpoint(out)
    t = glue.get_task(task)
    for name in files:
        rows = glue.read_submission(out / name)
        split = {"MNLI-mm.tsv": "test_mismatched"}.get(name, "test")
        src = glue.read_examples(root / "diagnostic", "ax", "test") if name == "AX.tsv" else \
            glue.read_examples(root / folder, task, split)
        assert [r[0] for r in rows] == [e.index for e in src]
        for _, p in rows:
            assert (0.0 <= float(p) <= 5.0) if t.is_regression else p in t.labels
    dev_rows = (out / f"dev_predictions_{t.name}.tsv").read_text().splitlines()
    assert dev_rows[0] == "index\tprediction\tlabel" and len(dev_rows) == 1 + len(glue.read_examples(root / folder, task, "dev"))


def _squad_file(path, v2):
    rng = random.Random(0)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    paras = []
    for p in range(3):
        ctx = " ".join(rng.choice(words) for _ in range(60)) + f" The answer is number {p}."
        qas = [{"id": f"p{p}q0", "question": "What is the answer?",
                "answers": [{"text": f"number {p}", "answer_start": ctx.index(f"number {p}")}]}]
        if v2:
            qas[0]["is_impossible"] = False
            qas.append({"id": f"p{p}q1", "question": "Who?", "answers": [], "is_impossible": True,
                        "plausible_answers": [{"text": "alpha", "answer_start": 0}]})
        paras.append({"context": ctx, "qas": qas})
    path.write_text(json.dumps({"version": "v2.0" if v2 else "1.1", "data": [{"title": "t", "paragraphs": paras}]}))
    return path


@pytest.mark.parametrize("v2", [False, True])
def test_squad_end_to_end(tmp_path, vocab_file, v2):
    f = _squad_file(tmp_path / "squad.json", v2)
    out = tmp_path / "out"
    args = ["squad", "--train_file", str(f), "--predict_file", str(f), "--output_dir", str(out)] + TINY
    assert _run(args, vocab_file) == 0
    res = _results(out)
    assert ({"exact", "f1", "HasAns_f1", "NoAns_f1", "best_f1", "best_f1_thresh"} if v2 else {"exact_match", "f1"}) \
        <= set(res["dev"])
    preds = json.loads((out / "predictions.json").read_text())
    data = json.loads(f.read_text())["data"][0]["paragraphs"]
    ids = [qa["id"] for p in data for qa in p["qas"]]
    assert sorted(preds) == sorted(ids)
    for p in data:
        for qa in p["qas"]:
            assert preds[qa["id"]] in p["context"]  # a span of the context ("" included)
    nbest = json.loads((out / "nbest_predictions.json").read_text())
    assert all(abs(sum(d["probability"] for d in v) - 1) < 1e-6 for v in nbest.values())
    assert (out / "null_odds.json").exists() == v2


CONLL_WORDS = ["EU", "rejects", "German", "call", "to", "boycott", "British", "lamb", "Peter", "Blackburn"]


def _conll(path, n, seed):
    rng = random.Random(seed)
    lines = ["-DOCSTART- -X- -X- O", ""]
    for _ in range(n):
        for w in rng.sample(CONLL_WORDS, 5):
            tag = {"EU": "B-ORG", "German": "B-MISC", "British": "B-MISC", "Peter": "B-PER", "Blackburn": "I-PER"}.get(w, "O")
            lines.append(f"{w} NNP B-NP {tag}")
        lines.append("")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_ner_conll_end_to_end(tmp_path, vocab_file):
    tr, dv, te = _conll(tmp_path / "train.txt", 12, 0), _conll(tmp_path / "dev.txt", 4, 1), _conll(tmp_path / "test.txt", 3, 2)
    out = tmp_path / "out"
    args = ["ner", "--train_file", str(tr), "--dev_file", str(dv), "--test_file", str(te), "--output_dir", str(out)] + TINY
    assert _run(args, vocab_file) == 0
    res = _results(out)
    assert {"precision", "recall", "f1", "accuracy"} <= set(res["dev"])
    _check_checkpoint(out)
    assert json.loads((out / "best" / "ner_labels.json").read_text())[0] == "O"
    for name, src in (("dev_predictions.txt", dv), ("test_predictions.txt", te)):
        got = [ln.split() for ln in (out / name).read_text().splitlines()]
        want = [ln.split() for ln in src.read_text().splitlines() if ln and not ln.startswith("-DOCSTART-")]
        got = [g for g in got if g]
        assert [g[:2] for g in got] == [[w[0], w[-1]] for w in want]  # word and gold tag, in order
        assert all(len(g) == 3 and (g[2] == "O" or g[2][:2] in ("B-", "I-")) for g in got)


def test_ner_cluener_end_to_end(tmp_path, vocab_file):
    recs = [{"id": i, "text": "北京大学在北京" + "的" * i, "label": {"organization": {"北京大学": [[0, 3]]},
                                                              "address": {"北京": [[5, 6]]}}} for i in range(6)]
    for name in ("train.json", "dev.json"):
        (tmp_path / name).write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in recs) + "\n")
    (tmp_path / "test.json").write_text(json.dumps({"id": 0, "text": "上海大学"}, ensure_ascii=False) + "\n")
    out = tmp_path / "out"
    args = ["ner", "--train_file", str(tmp_path / "train.json"), "--dev_file", str(tmp_path / "dev.json"),
            "--test_file", str(tmp_path / "test.json"), "--output_dir", str(out)] + TINY
    assert _run(args, vocab_file) == 0
    rows = [json.loads(x) for x in (out / "test_predictions.json").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 1 and rows[0]["id"] == 0 and isinstance(rows[0]["label"], dict)
    for typ, ents in rows[0]["label"].items():
        for ent, spans in ents.items():
            assert all("上海大学"[s:e + 1] == ent for s, e in spans)


def test_tnews_end_to_end(tmp_path, vocab_file):
    recs = [{"label": lab, "label_desc": "x", "sentence": s, "keywords": ""}
            for lab, s in [("103", "足球比赛今晚开始"), ("109", "手机芯片发布"), ("103", "篮球明星转会"), ("109", "人工智能新进展")]]
    for name in ("train.json", "dev.json"):
        (tmp_path / name).write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in recs) + "\n")
    (tmp_path / "test.json").write_text("\n".join(json.dumps({"id": i, "sentence": "比赛", "keywords": ""}) for i in range(3)) + "\n")
    out = tmp_path / "out"
    assert _run(["tnews", "--data_dir", str(tmp_path), "--output_dir", str(out)] + TINY, vocab_file) == 0
    assert "acc" in _results(out)["dev"]
    rows = [json.loads(x) for x in (out / "tnews_predict.json").read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in rows] == [0, 1, 2]
    from bertperf.finetune.tnews import TNEWS_LABELS
    assert all(TNEWS_LABELS[r["label"]] == r["label_desc"] for r in rows)


def test_learns_a_learnable_task_and_checkpoint_reproduces(tmp_path, vocab_file):
    """SST-2 layout, label = whether the review holds a positive or a negative word: a tiny
    random BERT must reach dev accuracy 1.0; re-scoring best/ with --no_train gives the same."""
    d = write_sentiment_task(tmp_path / "SST-2", 400, 64, random.Random(1),
                             fill="the movie plot actors scene story film director music screen".split(),
                             pos=["great", "wonderful", "excellent"], neg=["awful", "boring", "terrible"],
                             words=(3, 8))
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"preset": "demo", "batch_size": 16, "max_seq_length": 16, "max_steps": 60,
                               "eval_every": 20, "learning_rate": 1e-3}))
    out = tmp_path / "out"
    assert _run(["glue", "--task", "sst2", "--data_dir", str(d), "--output_dir", str(out), "--model", "tiny",
                 "--config", str(cfg)], vocab_file) == 0
    res = _results(out)
    assert res["dev"]["acc"] == 1.0
    hist = json.loads((out / "train_history.json").read_text())
    assert [h["step"] for h in hist] == [20, 40, 60] and hist[-1]["train_loss"] < hist[0]["train_loss"]
    again = tmp_path / "again"
    assert cli.main(["glue", "--task", "sst2", "--data_dir", str(d), "--output_dir", str(again),
                     "--model", str(out / "best"), "--config", str(cfg), "--no_train"]) == 0
    assert _results(again)["dev"] == res["dev"]


def test_cli_errors(tmp_path, vocab_file, capsys):
    from bertperf.utils.errors import BertperfError

    with pytest.raises(BertperfError, match="unknown GLUE task"):
        _run(["glue", "--task", "nope", "--data_dir", str(tmp_path), "--output_dir", str(tmp_path / "o")] + TINY, vocab_file)
    with pytest.raises(BertperfError, match="unknown fine-tuning preset 'fast'"):
        _run(["glue", "--task", "rte", "--data_dir", str(tmp_path), "--output_dir", str(tmp_path / "o"),
              "--model", "tiny", "--config", "fast"], vocab_file)
    with pytest.raises(BertperfError, match="--vocab is required"):
        cli.main(["tnews", "--data_dir", str(tmp_path), "--output_dir", str(tmp_path / "o"), "--model", "tiny"])
