"""Google's instance algorithm on synthetic corpora whose token ids encode where they come from.

Document k holds the ids BASE + OFFSET[k] + j for its j-th token, so an unmasked segment is a run
of consecutive ids and tells exactly which document and which span it came from.
"""
from __future__ import annotations

import math
import random

import numpy as np
import pytest

from bertperf.data.instances import (InstanceConfig, SpecialIds, TrainingInstance, create_masked_lm_predictions,
                                     create_training_instances, instances_to_arrays, truncate_seq_pair)

V, CLS, SEP, MASK, BASE = 30522, 101, 102, 103, 1000
SPECIAL = SpecialIds(cls=CLS, sep=SEP, mask=MASK, vocab_size=V)


def synthetic_corpus(n_docs: int, sent_len: tuple[int, int], doc_tokens: tuple[int, int], seed: int = 0):
    """Documents of sentences of consecutive ids; returns (documents, doc_of_id array)."""
    r = random.Random(seed)
    docs, start, owner = [], BASE, np.full(V, -1)
    for k in range(n_docs):
        total = r.randint(*doc_tokens)
        ids = list(range(start, start + total))
        owner[start:start + total] = k
        start += total
        sents, i = [], 0
        while i < total:
            n = r.randint(*sent_len)
            sents.append(ids[i:i + n])
            i += n
        docs.append(sents)
    assert start < V
    return docs, owner


def original_tokens(inst: TrainingInstance) -> np.ndarray:
    tokens = inst.tokens.copy()
    tokens[inst.masked_lm_positions] = inst.masked_lm_ids
    return tokens


def expected_predictions(length: int, cfg: InstanceConfig) -> int:
    return min(cfg.max_predictions_per_seq, max(1, int(round(length * cfg.masked_lm_prob))))


def test_truncate_seq_pair_trims_longer_segment_at_both_ends():
    rng = random.Random(0)
    fronts = []
    for _ in range(400):
        a, b = list(range(100)), list(range(1000, 1030))
        truncate_seq_pair(a, b, 60, rng)
        assert b == list(range(1000, 1030)) and len(a) == 30
        assert a == list(range(a[0], a[0] + 30))  # a contiguous slice of the original
        fronts.append(a[0])
    # 70 removals, each from the front with probability 1/2: mean 35, sd sqrt(70)/2 per trial.
    assert abs(np.mean(fronts) - 35) < 4.5 * math.sqrt(70) / 2 / math.sqrt(len(fronts))
    a, b = [1, 2, 3], [4, 5, 6]
    truncate_seq_pair(a, b, 5, rng)  # ties shorten B
    assert len(a) == 3 and len(b) == 2


@pytest.mark.parametrize("length,p,prob", [(5, 1, 0.15), (6, 20, 0.15), (20, 20, 0.15), (128, 20, 0.15),
                                           (128, 5, 0.15), (512, 80, 0.15), (40, 40, 1.0), (33, 20, 0.5)])
def test_masked_lm_predictions(length: int, p: int, prob: float):
    cfg = InstanceConfig(max_seq_length=max(length, 5), max_predictions_per_seq=p, masked_lm_prob=prob)
    rng = random.Random(length * 31 + p)
    a = length // 2 - 1
    tokens = [CLS] + list(range(BASE, BASE + a)) + [SEP] + list(range(5000, 5000 + length - a - 3)) + [SEP]
    for _ in range(20):
        out, positions, labels = create_masked_lm_predictions(tokens, cfg, SPECIAL, rng)
        n = min(expected_predictions(length, cfg), length - 3)  # never more than the candidates
        assert len(positions) == n
        assert positions == sorted(set(positions))
        assert all(tokens[q] not in (CLS, SEP) for q in positions)
        assert labels == [tokens[q] for q in positions]
        changed = {q for q in range(length) if out[q] != tokens[q]}
        assert changed <= set(positions)


def test_whole_word_masking_masks_every_piece():
    is_sub = np.zeros(V, bool)
    is_sub[2000:3000] = True  # "##" pieces
    special = SpecialIds(CLS, SEP, MASK, V, is_subword=is_sub)
    cfg = InstanceConfig(max_seq_length=64, max_predictions_per_seq=64, masked_lm_prob=0.3, do_whole_word_mask=True)
    rng = random.Random(1)
    words = [[BASE + k] + [2000 + 3 * k + j for j in range(k % 3)] for k in range(25)]  # 1 to 3 pieces
    tokens = [CLS] + [t for w in words for t in w] + [SEP]
    starts = np.cumsum([1] + [len(w) for w in words])[:-1]
    for _ in range(50):
        _, positions, _ = create_masked_lm_predictions(tokens, cfg, special, rng)
        chosen = set(positions)
        assert len(chosen) <= expected_predictions(len(tokens), cfg)
        for s, w in zip(starts, words):
            span = set(range(s, s + len(w)))
            assert not chosen & span or span <= chosen  # all or nothing


@pytest.mark.parametrize("seq,pred,short", [(5, 1, 0.1), (16, 3, 0.1), (64, 10, 0.0), (128, 20, 0.1), (512, 80, 0.5)])
def test_layout_spans_and_labels(seq: int, pred: int, short: float):
    docs, owner = synthetic_corpus(12, (1, 30), (50, 900), seed=seq)
    cfg = InstanceConfig(max_seq_length=seq, max_predictions_per_seq=pred, short_seq_prob=short)
    instances = create_training_instances(docs, cfg, SPECIAL, dupe_factor=2, rng=random.Random(seq))
    assert len(instances) > 20
    for inst in instances:
        tok = original_tokens(inst)
        length, na = len(tok), inst.num_a
        assert length <= seq and tok[0] == CLS and tok[na - 1] == SEP and tok[-1] == SEP
        assert np.count_nonzero(tok == SEP) == 2 and np.count_nonzero(tok == CLS) == 1
        a, b = tok[1:na - 1], tok[na:-1]
        assert len(a) >= 1 and len(b) >= 1
        assert np.all(np.diff(a) == 1) and np.all(np.diff(b) == 1)  # contiguous spans of one document
        if inst.is_random_next:
            assert owner[a[0]] != owner[b[0]]  # 12 documents: 10 misses in a row has chance 1e-11
        else:
            assert owner[a[0]] == owner[b[0]] and b[0] > a[-1]
        assert len(inst.masked_lm_positions) == min(expected_predictions(length, cfg), length - 3)

    arrays = instances_to_arrays(instances, seq, pred)
    for k, inst in enumerate(instances[:50]):
        length = len(inst.tokens)
        np.testing.assert_array_equal(arrays["input_ids"][k, :length], inst.tokens)
        assert not arrays["input_ids"][k, length:].any() and arrays["input_mask"][k].sum() == length
        assert list(arrays["segment_ids"][k]) == [0] * inst.num_a + [1] * (length - inst.num_a) + [0] * (seq - length)
        m = len(inst.masked_lm_positions)
        assert not arrays["masked_lm_positions"][k, m:].any() and not arrays["masked_lm_ids"][k, m:].any()
        assert arrays["next_sentence_labels"][k] == inst.is_random_next


def test_next_sentence_is_random_half_the_time():
    """Random next: a fair coin, plus every chunk of a single sentence (at most one per document end
    here: one-token sentences, so a chunk has ~target sentences)."""
    docs, owner = synthetic_corpus(10, (1, 1), (2000, 2400), seed=3)
    cfg = InstanceConfig(max_seq_length=32, short_seq_prob=0.0)
    dupe = 10
    instances = create_training_instances(docs, cfg, SPECIAL, dupe_factor=dupe, rng=random.Random(7))
    n = len(instances)
    rate = np.mean([i.is_random_next for i in instances])
    sigma = math.sqrt(0.25 / n)
    forced_at_most = len(docs) * dupe / n
    assert forced_at_most < 0.01
    assert 0.5 - 4.5 * sigma <= rate <= 0.5 + forced_at_most + 4.5 * sigma, (rate, n, forced_at_most)


def test_seeded_and_shuffled():
    docs, _ = synthetic_corpus(8, (2, 20), (100, 400), seed=5)
    cfg = InstanceConfig(max_seq_length=64, max_predictions_per_seq=10)

    def run(seed):
        return instances_to_arrays(create_training_instances(docs, cfg, SPECIAL, 2, random.Random(seed)), 64, 10)

    a, b, c = run(1), run(1), run(2)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert a["input_ids"].shape != c["input_ids"].shape or not np.array_equal(a["input_ids"], c["input_ids"])
    # Shuffled: the first token of A rises from one instance to the next about half the time (in
    # document order it would nearly always rise). Ascents of a random permutation of n: mean
    # (n-1)/2, variance (n+1)/12.
    first = [int(x[1]) for x in a["input_ids"] if x[1] != MASK]
    n = len(first)
    assert abs(np.sum(np.diff(first) > 0) - (n - 1) / 2) <= 4.5 * math.sqrt((n + 1) / 12)


# --- The fast path of `bertperf prepare`: closed-form truncation, vectorized masking. ---

def test_truncate_fast_matches_lengths_and_front_back_split():
    from bertperf.data.instances import truncate_seq_pair_fast

    r = random.Random(5)
    for _ in range(3000):  # the same final lengths as Google's loop, contiguous slices
        la, lb, m = r.randint(1, 60), r.randint(1, 60), r.randint(2, 100)
        a, b = list(range(la)), list(range(100, 100 + lb))
        a2, b2 = a[:], b[:]
        truncate_seq_pair(a, b, m, random.Random(1))
        truncate_seq_pair_fast(a2, b2, m, r)
        assert (len(a2), len(b2)) == (len(a), len(b))
        assert a2 == list(range(a2[0], a2[0] + len(a2))) and b2 == list(range(b2[0], b2[0] + len(b2)))
    fronts = []
    for _ in range(400):  # 70 removals from A, each at the front with probability 1/2
        a, b = list(range(100)), list(range(1000, 1030))
        truncate_seq_pair_fast(a, b, 60, r)
        fronts.append(a[0])
    assert abs(np.mean(fronts) - 35) < 4.5 * math.sqrt(70) / 2 / math.sqrt(len(fronts))
    assert np.var(fronts) == pytest.approx(70 / 4, rel=0.35)  # binomial variance, not a fixed split


@pytest.mark.parametrize("seq,pred,short", [(5, 1, 0.1), (16, 3, 0.1), (64, 10, 0.0), (128, 20, 0.1), (512, 80, 0.5)])
def test_instance_arrays_layout_spans_and_labels(seq: int, pred: int, short: float):
    from bertperf.data.instances import create_instance_arrays

    docs, owner = synthetic_corpus(12, (1, 30), (50, 900), seed=seq)
    cfg = InstanceConfig(max_seq_length=seq, max_predictions_per_seq=pred, short_seq_prob=short)
    a = create_instance_arrays(docs, cfg, SPECIAL, dupe_factor=2, seed=seq)
    n = len(a["next_sentence_labels"])
    assert n > 20 and a["input_ids"].shape == (n, seq) and a["masked_lm_positions"].shape == (n, pred)
    ids = a["input_ids"].copy()
    for k in range(n):
        m = int((a["masked_lm_positions"][k] > 0).sum())
        pos = a["masked_lm_positions"][k, :m]
        assert (a["masked_lm_positions"][k, m:] == 0).all() and (np.diff(pos) > 0).all()
        ids[k, pos] = a["masked_lm_ids"][k, :m]
        length = int(a["input_mask"][k].sum())
        assert (a["input_mask"][k, :length] == 1).all() and (a["input_ids"][k, length:] == 0).all()
        tok = ids[k, :length]
        na = length - int(a["segment_ids"][k].sum())
        assert tok[0] == CLS and tok[na - 1] == SEP and tok[-1] == SEP
        assert np.count_nonzero(tok == SEP) == 2 and np.count_nonzero(tok == CLS) == 1
        seg_a, seg_b = tok[1:na - 1], tok[na:-1]
        assert len(seg_a) >= 1 and len(seg_b) >= 1
        assert np.all(np.diff(seg_a) == 1) and np.all(np.diff(seg_b) == 1)
        if a["next_sentence_labels"][k]:
            assert owner[seg_a[0]] != owner[seg_b[0]]
        else:
            assert owner[seg_a[0]] == owner[seg_b[0]] and seg_b[0] > seg_a[-1]
        assert m == min(expected_predictions(length, cfg), length - 3)
        assert not np.isin(pos, (0, na - 1, length - 1)).any()
        assert not (a["input_ids"][k, :length] != tok)[np.setdiff1d(np.arange(length), pos)].any()
    again = create_instance_arrays(docs, cfg, SPECIAL, dupe_factor=2, seed=seq)
    assert all(np.array_equal(a[key], again[key]) for key in a)  # seeded


def test_mask_arrays_distribution():
    """Uniform choice among candidates and 80/10/10 replacement, as Google's per-instance masking."""
    from bertperf.data.instances import mask_arrays

    n, s = 4000, 40
    cfg = InstanceConfig(max_seq_length=s, max_predictions_per_seq=6, masked_lm_prob=0.15)
    lengths = np.full(n, 40)
    num_a = np.full(n, 15)
    ids = np.tile(np.arange(BASE, BASE + s, dtype=np.int32), (n, 1))
    ids[:, 0], ids[:, 14], ids[:, 39] = CLS, SEP, SEP
    original = ids.copy()
    pos, lab = mask_arrays(ids, lengths, num_a, cfg, SPECIAL, np.random.default_rng(0))
    assert ((pos > 0).sum(1) == 6).all()  # round(40 * 0.15) = 6
    rows = np.repeat(np.arange(n), 6)
    flat = pos.ravel()
    assert np.array_equal(lab.ravel(), original[rows, flat])
    counts = np.bincount(flat, minlength=s)
    assert counts[[0, 14, 39]].sum() == 0
    expected = n * 6 / 37  # 37 candidates, each equally likely
    assert (np.abs(counts[np.setdiff1d(np.arange(s), [0, 14, 39])] - expected) < 4.5 * math.sqrt(expected)).all()
    shown = ids[rows, flat]
    m = len(shown)
    for observed, p in ((shown == MASK).mean(), 0.8), ((shown == lab.ravel()).mean(), 0.1):
        assert abs(observed - p) <= 4.5 * math.sqrt(p * (1 - p) / m)
    changed = np.argwhere(ids != original)
    assert set(map(tuple, changed)) <= set(zip(rows.tolist(), flat.tolist()))
