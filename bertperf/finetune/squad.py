"""SQuAD v1.1 / v2.0: reading, features for BERT, n-best post-processing, official evaluation.

Reading: the official JSON (`{"version", "data": [{"title", "paragraphs": [{"context", "qas":
[{"id", "question", "answers": [{"text", "answer_start"}], "is_impossible"?}]}]}]}`). A file is
v2.0 when any question has an `is_impossible` field.

Features follow Google's `run_squad.py`: the question is cut to `max_query_length` tokens; the
context is split into windows of at most `max_seq_length - len(question) - 3` tokens whose starts
are `doc_stride` tokens apart (Google's meaning of doc_stride: the step between window starts,
not HF's overlap); each window is `[CLS] question [SEP] window [SEP]`. Each context token
remembers its character span in the context (offsets of the fast tokenizer), so an answer is cut
straight out of the original context text. The answer's labels are its first and last token's
positions in the window; an answer not wholly inside a window, or an impossible question,
labels the window (0, 0) = [CLS]. A token is "max context" in the window where
min(left context, right context) + 0.01 * window length is largest (Google's rule); only such
tokens may start a predicted answer.

Evaluation reproduces the official `evaluate-v1.1.py` and `evaluate-v2.0.py` (same answer
normalisation, same per-question max over gold answers, same totals). Differences, on purpose:
v1.1 counts a missing prediction as 0 (as the script, which warns); v2.0 raises BertperfError
naming the missing ids (the script dies with a KeyError there).
"""
from __future__ import annotations

import collections
import json
import logging
import math
import os
import re
import string
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from bertperf.finetune.common import FastTokenizer, need_file
from bertperf.utils.atomic import atomic_write_json
from bertperf.utils.errors import BertperfError

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


@dataclass
class SquadExample:
    """One question. `answers`: gold [{"text", "answer_start"}] (empty for impossible ones)."""

    qas_id: str
    question: str
    context: str
    answers: list[dict]
    is_impossible: bool = False
    title: str = ""


def load_squad_json(path: str | os.PathLike) -> dict:
    """The raw SQuAD JSON (`{"version", "data": [...]}`), checked for the `data` list."""
    path = need_file(path, "SQuAD file", "pass the train-v1.1.json / dev-v2.0.json path")
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BertperfError(f"{path}: not valid JSON ({e}); give the official SQuAD json file") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("data"), list):
        raise BertperfError(f"{path}: field 'data' (a list of articles) is missing; "
                            "this is not a SQuAD file")
    return obj


def is_v2(dataset: dict | list) -> bool:
    """True when any question carries `is_impossible` (SQuAD 2.0)."""
    articles = dataset["data"] if isinstance(dataset, dict) else dataset
    return any("is_impossible" in qa for a in articles for p in a.get("paragraphs", []) for qa in p.get("qas", []))


def read_squad_examples(path: str | os.PathLike) -> list[SquadExample]:
    """All questions of a SQuAD v1.1/v2.0 file, in file order. Missing fields -> BertperfError
    naming the article/paragraph/question. Answers are kept as given (checked later, in
    `create_features`, against the context)."""
    obj = load_squad_json(path)
    out: list[SquadExample] = []
    for ai, article in enumerate(obj["data"]):
        for pi, para in enumerate(article.get("paragraphs", [])):
            where = f"{os.fspath(path)}: data[{ai}].paragraphs[{pi}]"
            if not isinstance(para.get("context"), str):
                raise BertperfError(f"{where}: field 'context' (a string) is missing")
            for qi, qa in enumerate(para.get("qas", [])):
                for key in ("id", "question"):
                    if key not in qa:
                        raise BertperfError(f"{where}.qas[{qi}]: field {key!r} is missing")
                impossible = bool(qa.get("is_impossible", False))
                answers = [] if impossible else list(qa.get("answers", []))
                for a in answers:
                    if "text" not in a or "answer_start" not in a:
                        raise BertperfError(f"{where}.qas[{qi}] (id {qa['id']}): an answer lacks "
                                            "'text' or 'answer_start'")
                out.append(SquadExample(str(qa["id"]), qa["question"], para["context"], answers,
                                        impossible, article.get("title", "")))
    return out


# ---------------------------------------------------------------------------------------------
# Official evaluation (evaluate-v1.1.py, evaluate-v2.0.py)
# ---------------------------------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = frozenset(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lower-case, drop ASCII punctuation, replace the words a/an/the by a space, squeeze spaces."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def _overlap_f1(pred_toks: list[str], gold_toks: list[str]) -> float:
    common = collections.Counter(pred_toks) & collections.Counter(gold_toks)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_toks)
    recall = num_same / len(gold_toks)
    return 2 * precision * recall / (precision + recall)


def f1_v1(prediction: str, gold: str) -> float:
    """evaluate-v1.1 f1_score: token-overlap F1 of the normalised strings (0 if nothing shared)."""
    return _overlap_f1(normalize_answer(prediction).split(), normalize_answer(gold).split())


def exact_v1(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_v2(gold: str, prediction: str) -> float:
    """evaluate-v2.0 compute_f1: as v1.1, except that if either side normalises to no token the
    score is 1 when both do and 0 otherwise."""
    g, p = normalize_answer(gold).split(), normalize_answer(prediction).split()
    if not g or not p:
        return float(g == p)
    return _overlap_f1(p, g)


def exact_v2(gold: str, prediction: str) -> float:
    return float(normalize_answer(gold) == normalize_answer(prediction))


def _articles(dataset: dict | list) -> list:
    return dataset["data"] if isinstance(dataset, dict) else dataset


def evaluate_v1(dataset: dict | list, predictions: dict[str, str]) -> dict[str, float]:
    """Official v1.1 scores: {"exact_match", "f1"} in percent, over every question of the dataset
    (a question without prediction scores 0 and is logged, as the script prints it)."""
    em = f1 = 0.0
    total = 0
    for article in _articles(dataset):
        for para in article["paragraphs"]:
            for qa in para["qas"]:
                total += 1
                if qa["id"] not in predictions:
                    log.warning("Unanswered question %s will receive score 0.", qa["id"])
                    continue
                golds = [a["text"] for a in qa["answers"]]
                pred = predictions[qa["id"]]
                em += max(exact_v1(pred, g) for g in golds)
                f1 += max(f1_v1(pred, g) for g in golds)
    if total == 0:
        raise BertperfError("the SQuAD dataset has no question to evaluate")
    return {"exact_match": 100.0 * em / total, "f1": 100.0 * f1 / total}


def _raw_scores_v2(dataset, preds) -> tuple[dict[str, float], dict[str, float]]:
    exact, f1 = {}, {}
    for article in _articles(dataset):
        for para in article["paragraphs"]:
            for qa in para["qas"]:
                qid = qa["id"]
                golds = [a["text"] for a in qa["answers"] if normalize_answer(a["text"])]
                if not golds:  # unanswerable: the only right answer is the empty string
                    golds = [""]
                if qid not in preds:
                    continue
                exact[qid] = max(exact_v2(g, preds[qid]) for g in golds)
                f1[qid] = max(f1_v2(g, preds[qid]) for g in golds)
    return exact, f1


def _apply_threshold(scores, na_probs, has_ans, thresh) -> dict[str, float]:
    return {q: (float(not has_ans[q]) if na_probs[q] > thresh else s) for q, s in scores.items()}


def _eval_dict(exact, f1, qids=None) -> dict[str, float]:
    qids = list(exact) if not qids else qids
    n = len(qids)
    return {"exact": 100.0 * sum(exact[q] for q in qids) / n,
            "f1": 100.0 * sum(f1[q] for q in qids) / n, "total": n}


def find_best_thresh(preds, scores, na_probs, has_ans) -> tuple[float, float]:
    """Official find_best_thresh: start from "answer nothing" (score = #no-answer questions),
    walk questions by increasing na_prob, switching each to its prediction; keep the best.
    Returns (best score in percent of len(scores), the na_prob threshold reaching it)."""
    cur = best = sum(1 for q in has_ans if not has_ans[q])
    best_thresh = 0.0
    for qid in sorted(na_probs, key=lambda k: na_probs[k]):
        if qid not in scores:
            continue
        if has_ans[qid]:
            diff = scores[qid]
        else:
            diff = -1 if preds[qid] else 0
        cur += diff
        if cur > best:
            best, best_thresh = cur, na_probs[qid]
    return 100.0 * best / len(scores), best_thresh


def evaluate_v2(
    dataset: dict | list,
    preds: dict[str, str],
    na_probs: dict[str, float] | None = None,
    na_prob_thresh: float = 1.0,
) -> dict[str, float]:
    """Official v2.0 scores (percent): exact, f1, total, HasAns_*/NoAns_* breakdowns, and, when
    `na_probs` (question id -> no-answer score, e.g. null_odds.json) is given, best_exact,
    best_exact_thresh, best_f1, best_f1_thresh. A question whose na_prob exceeds
    `na_prob_thresh` counts as answered "no answer"."""
    has_ans = {qa["id"]: bool(qa["answers"]) for a in _articles(dataset)
               for p in a["paragraphs"] for qa in p["qas"]}
    missing = [q for q in has_ans if q not in preds]
    if missing:
        raise BertperfError(f"{len(missing)} questions have no prediction (first: {missing[:3]}); "
                            "the predictions file must answer every question ('' = no answer)")
    given_na = na_probs is not None
    na = na_probs if given_na else {k: 0.0 for k in preds}
    exact_raw, f1_raw = _raw_scores_v2(dataset, preds)
    exact_t = _apply_threshold(exact_raw, na, has_ans, na_prob_thresh)
    f1_t = _apply_threshold(f1_raw, na, has_ans, na_prob_thresh)
    out = _eval_dict(exact_t, f1_t)
    for prefix, qids in (("HasAns", [q for q, v in has_ans.items() if v]),
                         ("NoAns", [q for q, v in has_ans.items() if not v])):
        if qids:
            out.update({f"{prefix}_{k}": v for k, v in _eval_dict(exact_t, f1_t, qids).items()})
    if given_na:
        out["best_exact"], out["best_exact_thresh"] = find_best_thresh(preds, exact_raw, na, has_ans)
        out["best_f1"], out["best_f1_thresh"] = find_best_thresh(preds, f1_raw, na, has_ans)
    return out


def evaluate(dataset: dict, preds: dict[str, str], na_probs: dict[str, float] | None = None) -> dict:
    """v1.1 or v2.0 scores, whichever the dataset is."""
    return evaluate_v2(dataset, preds, na_probs) if is_v2(dataset) else evaluate_v1(dataset, preds)


# ---------------------------------------------------------------------------------------------
# Features
# ---------------------------------------------------------------------------------------------


@dataclass
class SquadFeature:
    """One window of one example. Lists have length max_seq_length (padded with 0).

    `offsets[i]`: (start, end) character span in the example's context for context tokens,
    None for [CLS], question, [SEP] and padding. `max_context[i]`: token i has its maximal
    context in this window (context tokens only). Positions: labels, 0 (= [CLS]) when the answer
    is not in this window or there is none.
    """

    example_index: int
    window_index: int
    input_ids: list[int]
    segment_ids: list[int]
    input_mask: list[int]
    offsets: list[tuple[int, int] | None]
    max_context: list[bool]
    start_position: int = 0
    end_position: int = 0


@dataclass
class FeatureStats:
    examples: int = 0
    features: int = 0
    skipped_bad_answer: int = 0  # answer text not found at answer_start (Google skips these too)
    windows_without_answer: int = 0
    skipped_ids: list[str] = field(default_factory=list)


def windows(n_tokens: int, max_tokens: int, doc_stride: int) -> list[tuple[int, int]]:
    """Google's doc spans: (start, length) pairs covering range(n_tokens); starts doc_stride
    apart, each at most max_tokens long, the last one reaching the end. n_tokens == 0 -> [(0, 0)]."""
    if max_tokens <= 0 or doc_stride <= 0:
        raise BertperfError(f"window length {max_tokens} and doc_stride {doc_stride} must be > 0: "
                            "raise max_seq_length or lower max_query_length / raise doc_stride")
    spans, start = [], 0
    while True:
        length = min(n_tokens - start, max_tokens)
        spans.append((start, length))
        if start + length >= n_tokens:
            return spans
        start += min(length, doc_stride)


def is_max_context(spans: list[tuple[int, int]], span_index: int, position: int) -> bool:
    """Google's _check_is_max_context: the span where `position` has the highest
    min(left, right) + 0.01 * length score (the first such span on ties)."""
    best_score, best_index = None, None
    for i, (start, length) in enumerate(spans):
        end = start + length - 1
        if position < start or position > end:
            continue
        score = min(position - start, end - position) + 0.01 * length
        if best_score is None or score > best_score:
            best_score, best_index = score, i
    return best_index == span_index


def max_context_spans(spans: list[tuple[int, int]], n_tokens: int) -> np.ndarray:
    """For every token 0..n_tokens-1, the index of the span where it has max context
    (vectorised `is_max_context`): int64 [n_tokens]."""
    pos = np.arange(n_tokens)
    best = np.full(n_tokens, -np.inf)
    idx = np.zeros(n_tokens, dtype=np.int64)
    for i, (start, length) in enumerate(spans):
        end = start + length - 1
        inside = (pos >= start) & (pos <= end)
        score = np.where(inside, np.minimum(pos - start, end - pos) + 0.01 * length, -np.inf)
        better = score > best  # strict: the first span wins ties
        best[better], idx[better] = score[better], i
    return idx


def answer_token_span(offsets: Sequence[tuple[int, int]], start_char: int, end_char: int) -> tuple[int, int] | None:
    """First and last token (indices into `offsets`) overlapping the char span [start_char,
    end_char); None when no token overlaps it (e.g. an answer made of spaces)."""
    first = last = None
    for i, (s, e) in enumerate(offsets):
        if e > start_char and s < end_char and e > s:
            if first is None:
                first = i
            last = i
    return None if first is None else (first, last)


def create_features(
    examples: Sequence[SquadExample],
    tokenizer: FastTokenizer,
    max_seq_length: int = 384,
    doc_stride: int = 128,
    max_query_length: int = 64,
    is_training: bool = False,
) -> tuple[list[SquadFeature], FeatureStats]:
    """Windows of every example (see module doc). Labels come from the first gold answer.

    With `is_training`, an example whose first answer is not `context[answer_start:][:len(text)]`
    is skipped (counted in the stats, like Google's "Could not find answer"); otherwise such
    examples keep (0, 0) labels: their evaluation only uses the answer texts.
    """
    stats = FeatureStats(examples=len(examples))
    tok = tokenizer.backend
    questions = tok.encode_batch([e.question for e in examples], add_special_tokens=False)
    uniq = list(dict.fromkeys(e.context for e in examples))
    ctx_enc = dict(zip(uniq, tok.encode_batch(uniq, add_special_tokens=False)))
    feats: list[SquadFeature] = []
    for ei, ex in enumerate(examples):
        q_ids = questions[ei].ids[:max_query_length]
        enc = ctx_enc[ex.context]
        c_ids, c_off = enc.ids, enc.offsets
        answer_tokens = None  # (first, last) context-token indices of the answer
        if not ex.is_impossible and ex.answers:
            a = ex.answers[0]
            start_char = int(a["answer_start"])
            end_char = start_char + len(a["text"])
            ok = ex.context[start_char:end_char] == a["text"]
            answer_tokens = answer_token_span(c_off, start_char, end_char) if ok else None
            if answer_tokens is None:
                if is_training:
                    stats.skipped_bad_answer += 1
                    stats.skipped_ids.append(ex.qas_id)
                    continue
        max_tokens = max_seq_length - len(q_ids) - 3
        spans = windows(len(c_ids), max_tokens, doc_stride)
        prefix = 2 + len(q_ids)  # [CLS] q [SEP]
        best_span = max_context_spans(spans, len(c_ids))
        for si, (start, length) in enumerate(spans):
            ids = [tokenizer.cls_id] + q_ids + [tokenizer.sep_id] + c_ids[start:start + length] + [tokenizer.sep_id]
            segs = [0] * prefix + [1] * (length + 1)
            offsets: list[tuple[int, int] | None] = [None] * prefix + [tuple(o) for o in c_off[start:start + length]] + [None]
            maxc = [False] * prefix + (best_span[start:start + length] == si).tolist() + [False]
            sp = ep = 0
            if answer_tokens is not None and answer_tokens[0] >= start and answer_tokens[1] < start + length:
                sp, ep = answer_tokens[0] - start + prefix, answer_tokens[1] - start + prefix
            else:
                stats.windows_without_answer += 1
            pad = max_seq_length - len(ids)
            feats.append(SquadFeature(
                example_index=ei, window_index=si,
                input_ids=ids + [tokenizer.pad_id] * pad, segment_ids=segs + [0] * pad,
                input_mask=[1] * len(ids) + [0] * pad, offsets=offsets + [None] * pad,
                max_context=maxc + [False] * pad, start_position=sp, end_position=ep))
    stats.features = len(feats)
    if stats.skipped_bad_answer:
        log.warning("skipped %d training examples whose answer text is not at answer_start (first ids: %s)",
                    stats.skipped_bad_answer, stats.skipped_ids[:5])
    return feats, stats


def features_to_arrays(features: Sequence[SquadFeature]) -> dict[str, np.ndarray]:
    """int64 arrays [F, S] input_ids, segment_ids, input_mask and [F] start/end_positions."""
    return {
        "input_ids": np.array([f.input_ids for f in features], dtype=np.int64),
        "segment_ids": np.array([f.segment_ids for f in features], dtype=np.int64),
        "input_mask": np.array([f.input_mask for f in features], dtype=np.int64),
        "start_positions": np.array([f.start_position for f in features], dtype=np.int64),
        "end_positions": np.array([f.end_position for f in features], dtype=np.int64),
    }


# ---------------------------------------------------------------------------------------------
# Post-processing
# ---------------------------------------------------------------------------------------------


def _softmax(x: Sequence[float]) -> list[float]:
    if not x:
        return []
    m = max(x)
    e = [math.exp(v - m) for v in x]
    s = sum(e)
    return [v / s for v in e]


#: null_odds of a v2.0 question with no valid answer span (finite, so null_odds.json stays JSON)
NO_CANDIDATE_NULL_ODDS = 1e9


def postprocess(
    examples: Sequence[SquadExample],
    features: Sequence[SquadFeature],
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    n_best_size: int = 20,
    max_answer_length: int = 30,
    version_2: bool = False,
    null_score_diff_threshold: float = 0.0,
) -> tuple[dict[str, str], dict[str, list[dict]], dict[str, float]]:
    """Logits [F, S] of every feature -> (predictions, nbest, null_odds), as Google's
    write_predictions: candidates are the n_best start x n_best end tokens of each window that
    are context tokens, start <= end, length <= max_answer_length, and start has max context;
    score = start_logit + end_logit. v2: the null score is the smallest [CLS] score over the
    windows; predict "" when null score - best non-null score > null_score_diff_threshold.
    null_odds holds that difference (v2 only; {} for v1)."""
    start_logits, end_logits = np.asarray(start_logits), np.asarray(end_logits)
    if start_logits.shape != end_logits.shape or start_logits.shape[0] != len(features):
        raise ValueError(f"logits shapes {start_logits.shape} / {end_logits.shape} do not match "
                         f"{len(features)} features")
    by_example: dict[int, list[int]] = collections.defaultdict(list)
    for fi, f in enumerate(features):
        by_example[f.example_index].append(fi)
    preds, nbest_out, null_odds = {}, {}, {}
    for ei, ex in enumerate(examples):
        cands = []  # (score, start_logit, end_logit, char_start, char_end)
        score_null, null_sl, null_el = math.inf, 0.0, 0.0
        for fi in by_example.get(ei, []):
            f, sl, el = features[fi], start_logits[fi], end_logits[fi]
            if version_2 and sl[0] + el[0] < score_null:
                score_null, null_sl, null_el = float(sl[0] + el[0]), float(sl[0]), float(el[0])
            top_s = np.argsort(-sl, kind="stable")[:n_best_size]
            top_e = np.argsort(-el, kind="stable")[:n_best_size]
            for s in top_s:
                if f.offsets[s] is None or not f.max_context[s]:
                    continue
                for e in top_e:
                    if f.offsets[e] is None or e < s or e - s + 1 > max_answer_length:
                        continue
                    cands.append((float(sl[s] + el[e]), float(sl[s]), float(el[e]), f.offsets[s][0], f.offsets[e][1]))
        cands.sort(key=lambda c: -c[0])
        nbest, seen = [], set()
        for score, s_l, e_l, cs, ce in cands:
            text = ex.context[cs:ce]
            if text in seen:
                continue
            seen.add(text)
            nbest.append({"text": text, "start_logit": s_l, "end_logit": e_l})
            if len(nbest) >= n_best_size:
                break
        if version_2 and math.isfinite(score_null):
            nbest.append({"text": "", "start_logit": null_sl, "end_logit": null_el})
            nbest.sort(key=lambda d: -(d["start_logit"] + d["end_logit"]))
            nbest = nbest[: max(n_best_size, 1) + 1]
        if not nbest:
            nbest = [{"text": "empty", "start_logit": 0.0, "end_logit": 0.0}]
        for d, p in zip(nbest, _softmax([d["start_logit"] + d["end_logit"] for d in nbest])):
            d["probability"] = p
        nbest_out[ex.qas_id] = nbest
        if not version_2:
            preds[ex.qas_id] = nbest[0]["text"]
            continue
        best_non_null = next((d for d in nbest if d["text"]), None)
        if best_non_null is None:  # no valid span at all: no answer, at any threshold
            preds[ex.qas_id], null_odds[ex.qas_id] = "", NO_CANDIDATE_NULL_ODDS
            continue
        diff = score_null - best_non_null["start_logit"] - best_non_null["end_logit"]
        null_odds[ex.qas_id] = diff
        preds[ex.qas_id] = "" if diff > null_score_diff_threshold else best_non_null["text"]
    return preds, nbest_out, null_odds


def write_predictions(out_dir: str | os.PathLike, preds: dict, nbest: dict, null_odds: dict) -> list[str]:
    """predictions.json, nbest_predictions.json and (v2) null_odds.json in `out_dir`, atomically."""
    out_dir = os.fspath(out_dir)
    paths = [os.path.join(out_dir, "predictions.json"), os.path.join(out_dir, "nbest_predictions.json")]
    atomic_write_json(paths[0], preds)
    atomic_write_json(paths[1], nbest)
    if null_odds:
        paths.append(os.path.join(out_dir, "null_odds.json"))
        atomic_write_json(paths[2], null_odds)
    return paths
