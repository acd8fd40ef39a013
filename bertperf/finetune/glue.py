"""GLUE data: the task TSV files as the GLUE download (`download_glue_data.py`) lays them out,
their label sets, and test-prediction files in the GLUE leaderboard's submission format.

Files are read like Google's run_classifier.py and HF's glue processors do (tab-separated, no
quoting: a `"` is an ordinary character). Layout per task (0-based columns; train/dev | test):

| task  | files                                          | header          | text_a | text_b | label  | test: index, a, b |
|-------|------------------------------------------------|-----------------|--------|--------|--------|-------------------|
| cola  | train, dev, test                               | none (test: yes)| 3      | -      | 1      | 0, 1, -           |
| sst2  | train, dev, test                               | yes             | 0      | -      | 1      | 0, 1, -           |
| mrpc  | train, dev, test                               | yes             | 3      | 4      | 0      | 0, 3, 4           |
| stsb  | train, dev, test                               | yes             | 7      | 8      | 9      | 0, 7, 8           |
| qqp   | train, dev, test                               | yes             | 3      | 4      | 5      | 0, 1, 2           |
| mnli  | train, dev_matched, dev_mismatched, test_matched, test_mismatched | yes | 8 | 9 | last | 0, 8, 9       |
| qnli, rte, wnli | train, dev, test                     | yes             | 1      | 2      | 3      | 0, 1, 2           |
| ax    | diagnostic.tsv (test only)                     | yes             | -      | -      | -      | 0, 1, 2           |

Every row must have as many columns as the header (CoLA train/dev: 4). A wrong count, a label
outside the task's label set, a header naming other columns -> BertperfError naming file, line
and fix. One known exception: QQP's train/dev files hold a few malformed rows (a question
missing, or a stray tab); like HF's QqpProcessor we skip QQP rows with a wrong column count,
count them and log the count with the first line numbers.

Submission files (`write_submission`): `<TASK>.tsv` named as the leaderboard expects (CoLA.tsv,
SST-2.tsv, MRPC.tsv, STS-B.tsv, QQP.tsv, MNLI-m.tsv, MNLI-mm.tsv, QNLI.tsv, RTE.tsv, WNLI.tsv,
AX.tsv), header `index\tprediction`, one row per test row in file order, the prediction as a
label string (STS-B: a float clipped to [0, 5], 3 decimals).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Sequence

from bertperf.finetune.common import need_file
from bertperf.utils.atomic import atomic_write_text
from bertperf.utils.errors import BertperfError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Layout:
    """Where the fields sit in one kind of file. Columns are 0-based; -1 = last."""

    header: tuple[str, ...] | None  # expected header names of the used columns in the order
    # (index, text_a, text_b, label), absent ones left out; None = the file has no header row
    n_cols: int | None  # None: as many as the header has
    text_a: int
    text_b: int | None = None
    label: int | None = None
    index: int | None = None


@dataclass(frozen=True)
class Task:
    name: str
    labels: tuple[str, ...] | None  # None = regression (STS-B)
    splits: dict[str, str]  # split -> file name under the task directory
    layouts: dict[str, Layout]  # "labelled" / "test"
    submission: dict[str, str]  # test split -> submission file name

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)


_STD_SPLITS = {"train": "train.tsv", "dev": "dev.tsv", "test": "test.tsv"}
_NLI3 = Layout(("sentence1", "sentence2", "label"), 4, 1, 2, 3)
_NLI3_TEST = Layout(("index", "sentence1", "sentence2"), 3, 1, 2, None, 0)


def _task(name, labels, labelled, test, submission, splits=None) -> Task:
    return Task(name, labels, splits or dict(_STD_SPLITS), {"labelled": labelled, "test": test}, submission)


TASKS: dict[str, Task] = {t.name: t for t in [
    _task("cola", ("0", "1"), Layout(None, 4, 3, None, 1), Layout(("index", "sentence"), 2, 1, None, None, 0),
          {"test": "CoLA.tsv"}),
    _task("sst2", ("0", "1"), Layout(("sentence", "label"), 2, 0, None, 1),
          Layout(("index", "sentence"), 2, 1, None, None, 0), {"test": "SST-2.tsv"}),
    _task("mrpc", ("0", "1"), Layout(("#1 string", "#2 string", "quality"), 5, 3, 4, 0),
          Layout(("index", "#1 string", "#2 string"), 5, 3, 4, None, 0), {"test": "MRPC.tsv"}),
    _task("stsb", None, Layout(("sentence1", "sentence2", "score"), 10, 7, 8, 9),
          Layout(("index", "sentence1", "sentence2"), 9, 7, 8, None, 0), {"test": "STS-B.tsv"}),
    _task("qqp", ("0", "1"), Layout(("question1", "question2", "is_duplicate"), 6, 3, 4, 5),
          Layout(("id", "question1", "question2"), 3, 1, 2, None, 0), {"test": "QQP.tsv"}),
    _task("mnli", ("contradiction", "entailment", "neutral"),
          Layout(("sentence1", "sentence2", "gold_label"), None, 8, 9, -1),
          Layout(("index", "sentence1", "sentence2"), 10, 8, 9, None, 0),
          {"test": "MNLI-m.tsv", "test_mismatched": "MNLI-mm.tsv"},
          splits={"train": "train.tsv", "dev": "dev_matched.tsv", "dev_mismatched": "dev_mismatched.tsv",
                  "test": "test_matched.tsv", "test_mismatched": "test_mismatched.tsv"}),
    _task("qnli", ("entailment", "not_entailment"), Layout(("question", "sentence", "label"), 4, 1, 2, 3),
          Layout(("index", "question", "sentence"), 3, 1, 2, None, 0), {"test": "QNLI.tsv"}),
    _task("rte", ("entailment", "not_entailment"), _NLI3, _NLI3_TEST, {"test": "RTE.tsv"}),
    _task("wnli", ("0", "1"), _NLI3, _NLI3_TEST, {"test": "WNLI.tsv"}),
    # the diagnostic set: predicted with an MNLI model, labels are MNLI's
    _task("ax", ("contradiction", "entailment", "neutral"), _NLI3_TEST, _NLI3_TEST, {"test": "AX.tsv"},
          splits={"test": "diagnostic.tsv"}),
]}

#: the directory names of download_glue_data.py, for error messages
GLUE_DIRS = {"cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "stsb": "STS-B", "qqp": "QQP", "mnli": "MNLI",
             "qnli": "QNLI", "rte": "RTE", "wnli": "WNLI", "ax": "diagnostic"}
_ALIASES = {"sst-2": "sst2", "sts-b": "stsb", "mnli-m": "mnli", "diagnostic": "ax"}


def get_task(name: str) -> Task:
    """The task spec for a GLUE task name (case-insensitive; SST-2, STS-B spellings accepted)."""
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in TASKS:
        raise BertperfError(f"unknown GLUE task {name!r}: use one of {', '.join(TASKS)}")
    return TASKS[key]


@dataclass
class InputExample:
    """One row. `label`: a label string, a float (STS-B) or None (test). `index`: the test row's
    index column (what the submission file repeats). `line`: 1-based line in the file."""

    guid: str
    text_a: str
    text_b: str | None
    label: str | float | None
    index: str | None
    line: int


def _layout(task: Task, split: str) -> Layout:
    return task.layouts["test" if split.startswith("test") else "labelled"]


def split_path(data_dir: str | os.PathLike, task: Task, split: str) -> str:
    if split not in task.splits:
        raise BertperfError(f"task {task.name} has no split {split!r}: use one of {', '.join(task.splits)}")
    return os.path.join(os.fspath(data_dir), task.splits[split])


def _read_rows(path: str) -> list[list[str]]:
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise BertperfError(f"{path}: not UTF-8 text ({e}); re-download the GLUE file") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r").split("\t") for line in lines]


def _check_header(path: str, task: Task, lay: Layout, header: list[str]) -> None:
    names = [h.strip().lower() for h in header]
    cols = [c for c in (lay.index, lay.text_a, lay.text_b, lay.label) if c is not None]
    want = list(lay.header)
    got = [names[c] if -len(names) <= c < len(names) else "<missing>" for c in cols]
    if got != want:
        raise BertperfError(
            f"{path}:1: header columns {got} where task {task.name} expects {want}; is this the "
            f"{GLUE_DIRS[task.name]} file of the GLUE download (download_glue_data.py)?")


def read_examples(data_dir: str | os.PathLike, task_name: str, split: str) -> list[InputExample]:
    """The examples of `split` ("train", "dev", "test", MNLI: also "dev_mismatched",
    "test_mismatched") of a GLUE task directory (e.g. glue_data/MRPC). See the module doc."""
    task = get_task(task_name)
    path = need_file(split_path(data_dir, task, split), f"GLUE {task.name} {split} file",
                     f"pass --data_dir the {GLUE_DIRS[task.name]} folder of the GLUE download "
                     "(download_glue_data.py)")
    lay = _layout(task, split)
    rows = _read_rows(path)
    first = 0
    n_cols = lay.n_cols
    if lay.header is not None:
        if not rows:
            raise BertperfError(f"{path}: empty file; a header row is expected")
        _check_header(path, task, lay, rows[0])
        n_cols = n_cols or len(rows[0])
        if len(rows[0]) != n_cols:
            raise BertperfError(f"{path}:1: header has {len(rows[0])} columns, task {task.name} files have "
                                f"{n_cols}; re-download the file")
        first = 1
    out: list[InputExample] = []
    skipped: list[int] = []
    for i in range(first, len(rows)):
        row, line = rows[i], i + 1
        if len(row) != n_cols:
            if task.name == "qqp":
                skipped.append(line)
                continue
            raise BertperfError(f"{path}:{line}: {len(row)} tab-separated columns where task {task.name} "
                                f"has {n_cols}; fix or delete this row (a tab inside a sentence?)")
        label: str | float | None = None
        if lay.label is not None:
            label = _parse_label(path, line, task, row[lay.label])
        out.append(InputExample(
            guid=f"{split}-{line}", text_a=row[lay.text_a],
            text_b=None if lay.text_b is None else row[lay.text_b], label=label,
            index=None if lay.index is None else row[lay.index], line=line))
    if skipped:
        log.warning("%s: skipped %d malformed QQP rows (wrong column count), lines %s%s", path, len(skipped),
                    skipped[:10], "..." if len(skipped) > 10 else "")
    return out


def _parse_label(path: str, line: int, task: Task, raw: str) -> str | float:
    if task.is_regression:
        try:
            return float(raw)
        except ValueError:
            raise BertperfError(f"{path}:{line}: score {raw!r} is not a number; STS-B scores are floats "
                                "in [0, 5]") from None
    lab = raw.strip()
    if lab not in task.labels:
        raise BertperfError(f"{path}:{line}: label {raw!r} is not one of {list(task.labels)} for task "
                            f"{task.name}; fix the row or check that this is the {task.name} file")
    return lab


def label_ids(task: Task, examples: Sequence[InputExample]) -> list[float] | list[int]:
    """Label ids (floats for STS-B) of labelled examples, in label-set order."""
    if task.is_regression:
        return [float(e.label) for e in examples]
    idx = {lab: i for i, lab in enumerate(task.labels)}
    return [idx[e.label] for e in examples]


def submission_name(task_name: str, split: str = "test") -> str:
    task = get_task(task_name)
    if split not in task.submission:
        raise BertperfError(f"task {task.name} has no test split {split!r} to submit: use "
                            f"{', '.join(task.submission)}")
    return task.submission[split]


def write_submission(
    out_dir: str | os.PathLike,
    task_name: str,
    examples: Sequence[InputExample],
    predictions: Sequence,
    split: str = "test",
) -> str:
    """Write `<out_dir>/<CoLA.tsv | ... >`: `index\\tprediction` then one row per example.

    predictions: label ids (classification) or floats (STS-B), one per example, in order.
    Returns the file path."""
    task = get_task(task_name)
    name = submission_name(task.name, split)
    if len(predictions) != len(examples):
        raise ValueError(f"{len(predictions)} predictions for {len(examples)} examples")
    lines = ["index\tprediction"]
    for j, (ex, p) in enumerate(zip(examples, predictions)):
        index = ex.index if ex.index is not None else str(j)
        if task.is_regression:
            value = f"{min(5.0, max(0.0, float(p))):.3f}"
        else:
            value = task.labels[int(p)]
        lines.append(f"{index}\t{value}")
    path = os.path.join(os.fspath(out_dir), name)
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def read_submission(path: str | os.PathLike) -> list[tuple[str, str]]:
    """(index, prediction) rows of a submission file (for checks)."""
    rows = _read_rows(need_file(path, "submission file", "write it with write_submission"))
    if not rows or rows[0] != ["index", "prediction"]:
        raise BertperfError(f"{path}:1: header must be 'index<TAB>prediction'")
    return [(r[0], r[1]) for r in rows[1:]]
