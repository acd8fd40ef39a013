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
