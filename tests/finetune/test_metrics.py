"""GLUE and NER metrics against hand-worked values and mathematical properties."""
from __future__ import annotations

import math

import numpy as np
import pytest

from bertperf.finetune import metrics as M
from bertperf.utils.errors import BertperfError


# ------------------------------------------------------------------ hand-worked values

def test_binary_hand_case():
    # labels 1 1 1 0 0 / preds 1 0 1 0 1: tp=2 fn=1 tn=1 fp=1
    y, p = [1, 1, 1, 0, 0], [1, 0, 1, 0, 1]
    assert M.accuracy(p, y) == 3 / 5
    # F1 = 2tp / (2tp + fp + fn) = 4 / 6
    assert M.f1_binary(p, y) == pytest.approx(2 / 3, abs=1e-15)
    # MCC = (tp tn - fp fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)) = (2-1)/sqrt(3*3*2*2) = 1/6
    assert M.matthews_corrcoef(p, y) == pytest.approx(1 / 6, abs=1e-15)
    g = M.glue_metrics("mrpc", p, y)
    assert g == pytest.approx({"acc": 0.6, "f1": 2 / 3, "acc_and_f1": (0.6 + 2 / 3) / 2})


def test_mcc_multiclass_hand_case():
    # y = 0 1 2 0 1 2, p = 0 2 1 0 0 2. Confusion (rows true): [[2,0,0],[1,0,1],[0,1,1]]
    # t = (2,2,2), p = (3,1,2), c = 3, s = 6: cov(y,p) = 18 - 12 = 6, cov(p,p) = 36 - 14 = 22,
    # cov(y,y) = 36 - 12 = 24 -> 6 / sqrt(22 * 24)
    got = M.matthews_corrcoef([0, 2, 1, 0, 0, 2], [0, 1, 2, 0, 1, 2])
    assert got == pytest.approx(6 / math.sqrt(528), abs=1e-15)


def test_mcc_degenerate_is_zero():
    # constant predictions: denominator 0 -> 0.0 (sklearn convention, what CoLA reports)
    assert M.matthews_corrcoef([1, 1, 1, 1], [0, 1, 0, 1]) == 0.0
    assert M.glue_metrics("cola", [0, 0], [0, 0]) == {"mcc": 0.0}


def test_f1_no_true_positive_is_zero():
    assert M.f1_binary([0, 0, 0], [1, 0, 1]) == 0.0
    assert M.f1_binary([1, 1], [0, 0]) == 0.0


def test_pearson_spearman_hand_case():
    # x = 1 2 3, y = 1 2 4: dx = (-1,0,1), dy = (-4/3,-1/3,5/3): sum dxdy = 3, sxx = 2, syy = 42/9
    assert M.pearson([1, 2, 3], [1, 2, 4]) == pytest.approx(3 / math.sqrt(2 * 42 / 9), abs=1e-15)
    # ties: x = 1 2 2 3 -> ranks 1 2.5 2.5 4 ; y = 1 3 2 4 -> ranks 1 3 2 4
    # dx = (-1.5,0,0,1.5), dy = (-1.5,.5,-.5,1.5): sum = 4.5, sxx = 4.5, syy = 5 -> sqrt(0.9)
    np.testing.assert_array_equal(M.rankdata_average([1, 2, 2, 3]), [1, 2.5, 2.5, 4])
    np.testing.assert_array_equal(M.rankdata_average([3, 1, 3, 3, 0]), [4, 2, 4, 4, 1])
    assert M.spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(math.sqrt(0.9), abs=1e-15)
    g = M.glue_metrics("stsb", [1, 2, 2, 3], [1, 3, 2, 4])
    assert g["spearmanr"] == pytest.approx(math.sqrt(0.9), abs=1e-15)
    assert g["corr"] == pytest.approx((g["pearson"] + g["spearmanr"]) / 2, abs=1e-15)


def test_constant_input_gives_nan():
    assert math.isnan(M.pearson([1, 1, 1], [1, 2, 3]))
    assert math.isnan(M.spearman([1, 2, 3], [5, 5, 5]))


# ------------------------------------------------------------------ properties

@pytest.mark.parametrize("n,seed", [(2, 0), (7, 1), (50, 2), (1001, 3)])
def test_pearson_matches_corrcoef(n, seed):
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=n), rng.normal(size=n)
    assert M.pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-12)


@pytest.mark.parametrize("n,seed", [(3, 0), (10, 1), (200, 2)])
def test_spearman_no_ties_closed_form_and_monotone_invariance(n, seed):
    rng = np.random.default_rng(seed)
    x, y = rng.permutation(n).astype(float), rng.permutation(n).astype(float)
    d = x - y  # both are ranks-1 already, no ties
    closed = 1 - 6 * np.sum(d * d) / (n * (n * n - 1))
    assert M.spearman(x, y) == pytest.approx(closed, abs=1e-12)
    assert M.spearman(np.exp(x / n), y ** 3) == pytest.approx(closed, abs=1e-12)
    assert M.spearman(x, x) == pytest.approx(1.0, abs=1e-15)
    assert M.spearman(x, -x) == pytest.approx(-1.0, abs=1e-15)


@pytest.mark.parametrize("seed", range(4))
def test_rank_average_ties_properties(seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 5, size=40)  # many ties
    r = M.rankdata_average(x)
    assert r.sum() == pytest.approx(40 * 41 / 2)  # ranks sum to n(n+1)/2 whatever the ties
    for v in np.unique(x):  # equal values, equal ranks; and rank = (#smaller) + (#equal + 1) / 2
        m = x == v
        assert np.all(r[m] == ((x < v).sum() + (m.sum() + 1) / 2))


@pytest.mark.parametrize("seed", range(4))
def test_mcc_binary_equals_pearson_of_indicators(seed):
    rng = np.random.default_rng(seed)
    y, p = rng.integers(0, 2, 100), rng.integers(0, 2, 100)
    assert M.matthews_corrcoef(p, y) == pytest.approx(M.pearson(p, y), abs=1e-12)
    assert M.matthews_corrcoef(p, y) == pytest.approx(M.matthews_corrcoef(y, p), abs=1e-15)
    assert M.matthews_corrcoef(1 - p, y) == pytest.approx(-M.matthews_corrcoef(p, y), abs=1e-12)
    assert M.matthews_corrcoef(y, y) == pytest.approx(1.0, abs=1e-15)


def test_glue_tasks_and_errors():
    assert set(M.glue_metrics("sst2", [1, 0], [1, 1])) == {"acc"}
    assert set(M.glue_metrics("qqp", [1, 0], [1, 1])) == {"acc", "f1", "acc_and_f1"}
    for task, key in M.GLUE_MAIN_METRIC.items():
        assert key in M.glue_metrics(task, [1.0, 0.0, 1.0], [1.0, 0.0, 0.0])
    with pytest.raises(BertperfError, match="unknown GLUE task 'mnlx'"):
        M.glue_metrics("mnlx", [1], [1])
    with pytest.raises(ValueError):
        M.accuracy([1, 2], [1])


# ------------------------------------------------------------------ NER

def test_bio_entities_conlleval_and_strict():
    tags = ["B-PER", "I-PER", "O", "I-LOC", "I-LOC", "B-ORG", "I-PER", "B-LOC", "B-LOC", "I-LOC"]
    # conlleval: I-LOC after O opens LOC(3,4); I-PER after B-ORG opens PER(6,6)
    assert M.bio_entities(tags) == [("PER", 0, 1), ("LOC", 3, 4), ("ORG", 5, 5), ("PER", 6, 6),
                                    ("LOC", 7, 7), ("LOC", 8, 9)]
    # strict IOB2: runs not opened by B are no entities
    assert M.bio_entities(tags, mode="strict") == [("PER", 0, 1), ("ORG", 5, 5), ("LOC", 7, 7),
                                                   ("LOC", 8, 9)]
    assert M.bio_entities([]) == []
    assert M.bio_entities(["I-X"]) == [("X", 0, 0)]
    assert M.bio_entities(["I-X"], mode="strict") == []
    with pytest.raises(BertperfError, match="not BIO"):
        M.bio_entities(["S-PER"])


def test_entity_scores_hand_case():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "I-ORG", "I-ORG", "O", "B-PER"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "I-ORG", "O", "O", "B-LOC"]]
    # gold: PER(0,0-1) LOC(0,3) ORG(1,0-2) PER(1,4) = 4 ; pred: PER(0,0-1) ORG(1,0-1) LOC(1,4) = 3
    # correct: PER(0,0-1) only -> P = 1/3, R = 1/4, F = 2 * (1/12) / (7/12) = 2/7
    s = M.entity_scores(gold, pred)
    assert s["precision"] == pytest.approx(1 / 3)
    assert s["recall"] == pytest.approx(1 / 4)
    assert s["f1"] == pytest.approx(2 / 7)
    assert s["support"] == 4
    assert s["accuracy"] == pytest.approx(6 / 9)  # tokens equal: 3 + 3 of 9
    assert s["per_type"]["PER"] == pytest.approx({"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2})
    assert s["per_type"]["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert s["per_type"]["ORG"]["support"] == 1


def test_entity_scores_perfect_and_mode_difference():
    gold = [["O", "I-MISC", "I-MISC", "O"]]
    assert M.entity_scores(gold, gold)["f1"] == 1.0
    pred = [["O", "B-MISC", "I-MISC", "O"]]
    assert M.entity_scores(gold, pred)["f1"] == 1.0  # conlleval: I-MISC after O == B-MISC
    strict = M.entity_scores(gold, pred, mode="strict")  # gold has no entity in strict mode
    assert (strict["precision"], strict["recall"], strict["support"]) == (0.0, 0.0, 0)
    with pytest.raises(ValueError):
        M.entity_scores([["O"]], [["O", "O"]])
