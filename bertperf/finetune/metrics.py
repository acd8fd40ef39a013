"""Evaluation metrics for fine-tuning, in numpy (no scipy / scikit-learn needed).

GLUE metrics are computed the way the GLUE benchmark (and HF's `glue_compute_metrics`, which
calls scikit-learn / scipy) computes them:

- CoLA: Matthews correlation coefficient (sklearn `matthews_corrcoef`, multiclass form; 0.0 when
  the denominator is 0, e.g. a constant prediction).
- STS-B: Pearson r and Spearman rho (ranks with ties given their average rank, as
  `scipy.stats.spearmanr`); `corr` is their mean. Constant input -> nan (scipy does the same).
- MRPC, QQP: accuracy and binary F1 of the positive class 1 (0.0 when there is no true positive,
  sklearn's `zero_division` default); `acc_and_f1` is their mean.
- everything else (SST-2, MNLI-m/mm, QNLI, RTE, WNLI, AX, TNEWS...): accuracy.

NER: entity-level precision / recall / F1 over BIO tags (`entity_scores`). Two conventions:

- ``mode="conlleval"`` (default, what seqeval does without ``mode="strict"`` and what the CoNLL
  `conlleval` script does): an entity starts at ``B-X``, or at ``I-X`` that follows ``O``, the
  sentence start, or a tag of another type; it runs over the following ``I-X`` tags.
- ``mode="strict"`` (seqeval ``mode="strict", scheme=IOB2``): only ``B-X I-X*`` is an entity; an
  ``I-X`` run not opened by ``B-X`` is not an entity at all.

A predicted entity is correct when type, start and end all equal a gold entity's. Scores are
micro-averaged over entity types; per-type scores are returned too.
"""
from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np

from bertperf.utils.errors import BertperfError

# ---------------------------------------------------------------------------------------------
# Classification / regression metrics
# ---------------------------------------------------------------------------------------------


def _as_1d(x: Sequence | np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    return a


def _pair(preds, labels) -> tuple[np.ndarray, np.ndarray]:
    p, y = _as_1d(preds, "preds"), _as_1d(labels, "labels")
    if p.shape != y.shape:
        raise ValueError(f"preds and labels differ in length: {p.shape[0]} vs {y.shape[0]}")
    if p.size == 0:
        raise ValueError("no predictions to score")
    return p, y


def accuracy(preds, labels) -> float:
    """Fraction of equal entries of two 1-D arrays of the same length."""
    p, y = _pair(preds, labels)
    return float(np.mean(p == y))


def f1_binary(preds, labels, positive=1) -> float:
    """F1 of the `positive` class: 2 tp / (2 tp + fp + fn); 0.0 when tp == 0 (sklearn default)."""
    p, y = _pair(preds, labels)
    tp = int(np.sum((p == positive) & (y == positive)))
    fp = int(np.sum((p == positive) & (y != positive)))
    fn = int(np.sum((p != positive) & (y == positive)))
    if tp == 0:
        return 0.0
    return 2.0 * tp / (2.0 * tp + fp + fn)


def matthews_corrcoef(preds, labels) -> float:
    """Matthews correlation, multiclass form (Gorodkin 2004), as sklearn computes it.

    With C the confusion matrix, t_k = row sums (true counts), p_k = column sums (predicted
    counts), c = trace, s = total:  (c s - t.p) / sqrt((s^2 - p.p) (s^2 - t.t)); 0.0 if the
    denominator is 0. For two classes this equals (tp tn - fp fn) / sqrt(...) of the 2x2 table.
    """
    p, y = _pair(preds, labels)
    classes, inv = np.unique(np.concatenate([y, p]), return_inverse=True)
    k = classes.size
    yi, pi = inv[: y.size], inv[y.size :]
    cm = np.zeros((k, k), dtype=np.float64)
    np.add.at(cm, (yi, pi), 1.0)
    t, pk = cm.sum(axis=1), cm.sum(axis=0)
    c, s = np.trace(cm), cm.sum()
    cov_ytyp = c * s - t @ pk
    cov_ypyp = s * s - pk @ pk
    cov_ytyt = s * s - t @ t
    denom = cov_ypyp * cov_ytyt
    if denom == 0:
        return 0.0
    return float(cov_ytyp / np.sqrt(denom))


def pearson(x, y) -> float:
    """Pearson correlation of two 1-D float arrays; nan if either is constant."""
    a, b = _pair(x, y)
    a = a.astype(np.float64) - a.astype(np.float64).mean()
    b = b.astype(np.float64) - b.astype(np.float64).mean()
    denom = np.sqrt((a @ a) * (b @ b))
    if denom == 0:
        return float("nan")
    r = float((a @ b) / denom)
    return max(-1.0, min(1.0, r))


def rankdata_average(x) -> np.ndarray:
    """Ranks 1..n of a 1-D array, tied values all getting the mean of their ranks (float64)."""
    a = _as_1d(x, "x")
    order = np.argsort(a, kind="mergesort")
    sorted_a = a[order]
    # start of each run of equal values in sorted order
    new_run = np.concatenate([[True], sorted_a[1:] != sorted_a[:-1]])
    run_id = np.cumsum(new_run) - 1
    run_starts = np.flatnonzero(new_run)
    run_ends = np.concatenate([run_starts[1:], [a.size]])  # exclusive
    # positions start..end-1 (0-based) have ranks start+1..end; their mean is (start+1+end)/2
    mean_rank = (run_starts + 1 + run_ends) / 2.0
    ranks = np.empty(a.size, dtype=np.float64)
    ranks[order] = mean_rank[run_id]
    return ranks


def spearman(x, y) -> float:
    """Spearman rank correlation = Pearson correlation of average ranks; nan if either is constant."""
    a, b = _pair(x, y)
    return pearson(rankdata_average(a), rankdata_average(b))


# ---------------------------------------------------------------------------------------------
# GLUE
# ---------------------------------------------------------------------------------------------

#: task -> main metric reported on the GLUE leaderboard (used for "best checkpoint" selection)
GLUE_MAIN_METRIC = {
    "cola": "mcc",
    "sst2": "acc",
    "mrpc": "f1",
    "stsb": "pearson",
    "qqp": "f1",
    "mnli": "acc",
    "mnli-mm": "acc",
    "qnli": "acc",
    "rte": "acc",
    "wnli": "acc",
    "ax": "mcc",
}


def glue_metrics(task: str, preds, labels) -> dict[str, float]:
    """Metrics of one GLUE task, with the keys HF's `glue_compute_metrics` uses.

    preds/labels: 1-D label ids (floats for stsb). Returns e.g. {"mcc": ...} for cola,
    {"pearson", "spearmanr", "corr"} for stsb, {"acc", "f1", "acc_and_f1"} for mrpc/qqp,
    {"acc"} otherwise. Unknown task -> BertperfError.
    """
    task = task.lower()
    if task not in GLUE_MAIN_METRIC:
        raise BertperfError(
            f"unknown GLUE task {task!r} for metrics: use one of {', '.join(sorted(GLUE_MAIN_METRIC))}"
        )
    if task in ("cola", "ax"):
        return {"mcc": matthews_corrcoef(preds, labels)}
    if task == "stsb":
        pr, sr = pearson(preds, labels), spearman(preds, labels)
        return {"pearson": pr, "spearmanr": sr, "corr": (pr + sr) / 2.0}
    if task in ("mrpc", "qqp"):
        acc, f1 = accuracy(preds, labels), f1_binary(preds, labels, positive=1)
        return {"acc": acc, "f1": f1, "acc_and_f1": (acc + f1) / 2.0}
    return {"acc": accuracy(preds, labels)}


# ---------------------------------------------------------------------------------------------
# NER (entity level, BIO)
# ---------------------------------------------------------------------------------------------

Entity = tuple[str, int, int]  # (type, start, end) with end inclusive, token indices


def _split_tag(tag: str) -> tuple[str, str]:
    """'B-PER' -> ('B', 'PER'); 'O' -> ('O', ''). Anything else is an error."""
    if tag == "O":
        return "O", ""
    if len(tag) > 2 and tag[0] in "BI" and tag[1] in "-_":
        return tag[0], tag[2:]
    raise BertperfError(f"tag {tag!r} is not BIO: use 'O', 'B-TYPE' or 'I-TYPE'")


def bio_entities(tags: Sequence[str], mode: str = "conlleval") -> list[Entity]:
    """Entities (type, start, end-inclusive) of one BIO tag sequence, under `mode` (see module doc)."""
    if mode not in ("conlleval", "strict"):
        raise ValueError(f"mode must be 'conlleval' or 'strict', got {mode!r}")
    out: list[Entity] = []
    cur_type, cur_start, cur_valid = "", -1, False
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, typ = _split_tag(tag)
        continues = prefix == "I" and cur_start >= 0 and typ == cur_type
        if continues:
            continue
        if cur_start >= 0 and cur_valid:
            out.append((cur_type, cur_start, i - 1))
        if prefix == "O":
            cur_type, cur_start, cur_valid = "", -1, False
        else:
            # B always opens; an I that does not continue opens one only in conlleval mode
            # (strict mode keeps tracking the run so its I tags are swallowed, but drops it)
            cur_type, cur_start = typ, i
            cur_valid = prefix == "B" or mode == "conlleval"
    return out


def _prf(correct: int, n_pred: int, n_gold: int) -> dict[str, float]:
    p = correct / n_pred if n_pred else 0.0
    r = correct / n_gold if n_gold else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": p, "recall": r, "f1": f, "support": n_gold}


def entity_scores(
    gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]], mode: str = "conlleval"
) -> dict:
    """Entity-level micro precision / recall / F1 over sentences of BIO tags.

    gold, pred: lists of tag lists, sentence by sentence, equal lengths. Returns
    {"precision", "recall", "f1", "support" (gold entity count), "accuracy" (token level),
    "per_type": {type: {"precision", "recall", "f1", "support"}}}. Precision (recall) is 0.0
    when there is no predicted (gold) entity, as seqeval does.
    """
    if len(gold) != len(pred):
        raise ValueError(f"gold has {len(gold)} sentences, pred has {len(pred)}")
    n_gold, n_pred, n_ok = Counter(), Counter(), Counter()
    tok_ok = tok_all = 0
    for i, (g, p) in enumerate(zip(gold, pred)):
        if len(g) != len(p):
            raise ValueError(f"sentence {i}: {len(g)} gold tags but {len(p)} predicted tags")
        ge, pe = set(bio_entities(g, mode)), set(bio_entities(p, mode))
        n_gold.update(e[0] for e in ge)
        n_pred.update(e[0] for e in pe)
        n_ok.update(e[0] for e in ge & pe)
        tok_ok += sum(a == b for a, b in zip(g, p))
        tok_all += len(g)
    out = _prf(sum(n_ok.values()), sum(n_pred.values()), sum(n_gold.values()))
    out["accuracy"] = tok_ok / tok_all if tok_all else 0.0
    out["per_type"] = {
        t: _prf(n_ok[t], n_pred[t], n_gold[t]) for t in sorted(set(n_gold) | set(n_pred))
    }
    return out
