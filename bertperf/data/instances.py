"""Masked-LM / next-sentence instances: the algorithm of Google's `create_pretraining_data.py`.

Reproduced step by step (same order of random draws, on a `random.Random(seed)`):

* documents (lists of tokenized sentences; empty sentences and documents dropped) are shuffled;
* for each of `dupe_factor` passes, for each document: a target length is drawn once per document
  (`max_seq_length - 3`, or with probability `short_seq_prob` a uniform integer in [2, that]);
  sentences are gathered into a chunk until it reaches the target or the document ends; segment A
  is the first `randint(1, len(chunk) - 1)` sentences; with probability 1/2 (always when the chunk
  has one sentence) segment B comes from a random other document starting at a random sentence and
  the unused sentences are put back, otherwise B is the rest of the chunk;
* the pair is truncated to `max_seq_length - 3` tokens, removing from the longer segment, at the
  front or the back with probability 1/2 each;
* `[CLS] A [SEP] B [SEP]`; `min(max_predictions, max(1, round(len * masked_lm_prob)))` positions
  (len counts [CLS]/[SEP], which are never candidates) are picked in a shuffled order (whole words
  when `do_whole_word_mask`), and each is replaced by [MASK] 80%, kept 10%, a random vocab id 10%;
  predictions are sorted by position;
* all instances are shuffled at the end.

Tokens are ids (ints), so "a random word from the vocab" is `randint(0, vocab_size - 1)`.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from bertperf.data.shards import SCHEMA

TokenizedDocument = list[list[int]]  # sentences of token ids


@dataclass(frozen=True)
class InstanceConfig:
    """Parameters of instance creation (Google's flag names and defaults)."""

    max_seq_length: int = 128
    max_predictions_per_seq: int = 20
    masked_lm_prob: float = 0.15
    short_seq_prob: float = 0.1
    do_whole_word_mask: bool = False

    def check(self) -> None:
        """Raise ValueError for values the algorithm cannot use."""
        if self.max_seq_length < 5:
            raise ValueError(f"max_seq_length must be >= 5 ([CLS] A [SEP] B [SEP] with 2 tokens), got {self.max_seq_length}")
        if not 1 <= self.max_predictions_per_seq <= self.max_seq_length:
            raise ValueError(f"max_predictions_per_seq must be in [1, max_seq_length], got {self.max_predictions_per_seq}")
        if not 0.0 < self.masked_lm_prob <= 1.0:
            raise ValueError(f"masked_lm_prob must be in (0, 1], got {self.masked_lm_prob}")
        if not 0.0 <= self.short_seq_prob <= 1.0:
            raise ValueError(f"short_seq_prob must be in [0, 1], got {self.short_seq_prob}")


@dataclass(frozen=True)
class SpecialIds:
    """Ids of the special tokens and the vocab size; `is_subword[id]` marks "##" pieces."""

    cls: int
    sep: int
    mask: int
    vocab_size: int
    is_subword: np.ndarray | None = None


@dataclass
class TrainingInstance:
    """One instance before padding. `tokens` [L] (after masking, L <= max_seq_length) is
    [CLS] A [SEP] B [SEP]; `num_a` = len(A) + 2 (the segment-0 part); `masked_lm_positions` and
    `masked_lm_ids` [M] (M <= max_predictions) are ascending positions and the original ids."""

    tokens: np.ndarray
    num_a: int
    masked_lm_positions: np.ndarray
    masked_lm_ids: np.ndarray
    is_random_next: bool


def truncation_counts(la: int, lb: int, max_num_tokens: int, rng: random.Random) -> tuple[int, int, int, int]:
    """Google's `truncate_seq_pair` on lengths: one token at a time from the longer segment (B on
    ties), from the front or the back with one `rng.random()` each, in Google's order.
    Returns (front_a, back_a, front_b, back_b), the tokens to remove."""
    fa = ba = fb = bb = 0
    while la + lb > max_num_tokens:
        front = rng.random() < 0.5
        if la > lb:
            la -= 1
            fa, ba = (fa + 1, ba) if front else (fa, ba + 1)
        else:
            lb -= 1
            fb, bb = (fb + 1, bb) if front else (fb, bb + 1)
    return fa, ba, fb, bb


def truncation_counts_fast(la: int, lb: int, max_num_tokens: int, rng: random.Random) -> tuple[int, int, int, int]:
    """`truncation_counts` in closed form, same distribution: the longer segment is cut down to the
    shorter, then both in turn (B first); a segment losing x tokens loses f from the front and
    x - f from the back with f ~ Binomial(x, 1/2) (one draw of x random bits)."""
    excess = la + lb - max_num_tokens
    if excess <= 0:
        return 0, 0, 0, 0
    gap = abs(la - lb)
    if gap >= excess:
        cut_a, cut_b = (excess, 0) if la > lb else (0, excess)
    else:
        rest = excess - gap
        cut_a = (gap if la > lb else 0) + rest // 2
        cut_b = (gap if lb > la else 0) + rest - rest // 2
    fa = bin(rng.getrandbits(cut_a)).count("1") if cut_a else 0
    fb = bin(rng.getrandbits(cut_b)).count("1") if cut_b else 0
    return fa, cut_a - fa, fb, cut_b - fb


def _cut(tokens: list[int], front: int, back: int) -> None:
    del tokens[:front]
    if back:
        del tokens[len(tokens) - back:]


def truncate_seq_pair(tokens_a: list[int], tokens_b: list[int], max_num_tokens: int, rng: random.Random) -> None:
    """Shorten the pair in place to `max_num_tokens` in total: one token at a time from the longer
    one (B on ties), from the front or the back at random (to avoid a bias towards the end)."""
    fa, ba, fb, bb = truncation_counts(len(tokens_a), len(tokens_b), max_num_tokens, rng)
    _cut(tokens_a, fa, ba)
    _cut(tokens_b, fb, bb)


def truncate_seq_pair_fast(tokens_a: list[int], tokens_b: list[int], max_num_tokens: int, rng: random.Random) -> None:
    """`truncate_seq_pair` with `truncation_counts_fast` (same distribution, fewer draws)."""
    fa, ba, fb, bb = truncation_counts_fast(len(tokens_a), len(tokens_b), max_num_tokens, rng)
    _cut(tokens_a, fa, ba)
    _cut(tokens_b, fb, bb)


def create_masked_lm_predictions(tokens: list[int], cfg: InstanceConfig, special: SpecialIds,
                                 rng: random.Random) -> tuple[list[int], list[int], list[int]]:
    """Mask `tokens` ([CLS] A [SEP] B [SEP]) -> (output tokens, sorted positions, original ids)."""
    cand_indexes: list[list[int]] = []
    wwm = cfg.do_whole_word_mask and special.is_subword is not None
    for i, tok in enumerate(tokens):
        if tok == special.cls or tok == special.sep:
            continue
        if wwm and cand_indexes and special.is_subword[tok]:
            cand_indexes[-1].append(i)
        else:
            cand_indexes.append([i])
    rng.shuffle(cand_indexes)

    output = list(tokens)
    num_to_predict = min(cfg.max_predictions_per_seq, max(1, int(round(len(tokens) * cfg.masked_lm_prob))))
    masked: list[tuple[int, int]] = []
    covered: set[int] = set()
    for index_set in cand_indexes:
        if len(masked) >= num_to_predict:
            break
        if len(masked) + len(index_set) > num_to_predict:
            continue
        if any(i in covered for i in index_set):
            continue
        for index in index_set:
            covered.add(index)
            if rng.random() < 0.8:
                new = special.mask
            elif rng.random() < 0.5:
                new = tokens[index]
            else:
                new = rng.randint(0, special.vocab_size - 1)
            output[index] = new
            masked.append((index, tokens[index]))
    masked.sort()
    return output, [p for p, _ in masked], [t for _, t in masked]


GATHER_ROWS = 8192
Span = tuple[int, int, int, int, bool]  # a_start, a_end, b_start, b_end (token offsets), is_random_next


def sentence_offsets(documents: Sequence[TokenizedDocument], start: int = 0) -> list[list[int]]:
    """Token offsets of the sentence starts of each document, plus its end (len = sentences + 1),
    counted from `start` and running on across documents (global offsets into their concatenation)."""
    out = []
    pos = start
    for doc in documents:
        offs = [pos]
        for sent in doc:
            pos += len(sent)
            offs.append(pos)
        out.append(offs)
    return out


def document_spans(offsets: Sequence[Sequence[int]], document_index: int, cfg: InstanceConfig,
                   rng: random.Random, truncate=truncation_counts) -> Iterator[Span]:
    """The NSP pairs whose segment A comes from document `document_index`, as token spans (Google's
    algorithm: its random draws, in its order when `truncate` is `truncation_counts`).

    `offsets[d]` are the sentence offsets of document d (`sentence_offsets`); every sentence is
    non-empty. A chunk of sentences grows until it reaches the target length (drawn once per
    document) or the document ends; A is its first `randint(1, n - 1)` sentences; B is the rest,
    or (probability 1/2, always for a one-sentence chunk) sentences of another document from a
    random start, the unused sentences of the chunk being put back; the pair is then truncated to
    max_seq_length - 3 tokens.
    """
    offs = offsets[document_index]
    n = len(offs) - 1
    max_num_tokens = cfg.max_seq_length - 3
    target = max_num_tokens
    if rng.random() < cfg.short_seq_prob:
        target = rng.randint(2, max_num_tokens)
    start = 0
    i = 0
    while i < n:
        if i == n - 1 or offs[i + 1] - offs[start] >= target:
            count = i - start + 1
            a_end = rng.randint(1, count - 1) if count >= 2 else 1
            a0, a1 = offs[start], offs[start + a_end]
            if count == 1 or rng.random() < 0.5:
                is_random = True
                target_b = target - (a1 - a0)
                # Up to 10 tries for another document (the same one is possible when all fail).
                for _ in range(10):
                    r = rng.randint(0, len(offsets) - 1)
                    if r != document_index:
                        break
                roffs = offsets[r]
                last = len(roffs) - 2
                rs = rng.randint(0, last)
                j = rs
                while j < last and roffs[j + 1] - roffs[rs] < target_b:
                    j += 1
                b0, b1 = roffs[rs], roffs[j + 1]
                i -= count - a_end  # put the unused sentences back
            else:
                is_random = False
                b0, b1 = a1, offs[i + 1]
            fa, ba, fb, bb = truncate(a1 - a0, b1 - b0, max_num_tokens, rng)
            yield a0 + fa, a1 - ba, b0 + fb, b1 - bb, is_random
            start = i + 1
        i += 1


def create_instances_from_document(all_documents: Sequence[TokenizedDocument], document_index: int,
                                   cfg: InstanceConfig, special: SpecialIds, rng: random.Random,
                                   flat: list[int] | None = None,
                                   offsets: Sequence[Sequence[int]] | None = None) -> list[TrainingInstance]:
    """Instances whose segment A comes from `all_documents[document_index]` (Google's algorithm,
    each pair masked before the next is drawn, as Google's script does). `flat` (all tokens
    concatenated) and `offsets` (`sentence_offsets` of all documents) are computed when not given."""
    if flat is None or offsets is None:
        flat = [t for doc in all_documents for sent in doc for t in sent]
        offsets = sentence_offsets(all_documents)
    instances: list[TrainingInstance] = []
    for a0, a1, b0, b1, is_random_next in document_spans(offsets, document_index, cfg, rng):
        assert a1 > a0 and b1 > b0
        tokens = [special.cls, *flat[a0:a1], special.sep, *flat[b0:b1], special.sep]
        output, positions, labels = create_masked_lm_predictions(tokens, cfg, special, rng)
        instances.append(TrainingInstance(
            tokens=np.asarray(output, dtype=np.int32), num_a=a1 - a0 + 2,
            masked_lm_positions=np.asarray(positions, dtype=np.int32),
            masked_lm_ids=np.asarray(labels, dtype=np.int32), is_random_next=is_random_next))
    return instances


def create_training_instances(documents: Sequence[TokenizedDocument], cfg: InstanceConfig, special: SpecialIds,
                              dupe_factor: int, rng: random.Random, progress: bool = False) -> list[TrainingInstance]:
    """All instances of `dupe_factor` passes over the documents, shuffled.

    Empty sentences and documents are dropped first; the document list is shuffled with `rng`.
    Memory: about (4*L + 8*M + 150) bytes per instance.
    """
    cfg.check()
    all_documents = [[s for s in doc if s] for doc in documents]
    all_documents = [d for d in all_documents if d]
    rng.shuffle(all_documents)
    instances: list[TrainingInstance] = []
    if not all_documents:
        return instances
    total = dupe_factor * len(all_documents)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=total, desc="instances", unit="doc", mininterval=0.5)
    flat = [t for doc in all_documents for sent in doc for t in sent]
    offsets = sentence_offsets(all_documents)
    for _ in range(dupe_factor):
        for document_index in range(len(all_documents)):
            instances.extend(create_instances_from_document(all_documents, document_index, cfg, special, rng,
                                                            flat, offsets))
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    rng.shuffle(instances)
    return instances


def instances_to_arrays(instances: Sequence[TrainingInstance], max_seq_length: int,
                        max_predictions_per_seq: int) -> dict[str, np.ndarray]:
    """Pad instances into the shard schema arrays ([N, S], [N, P], [N]; dtypes of SCHEMA)."""
    n, s, p = len(instances), max_seq_length, max_predictions_per_seq
    out = {name: np.zeros((n, s) if ndim == 2 else (n,), dtype=dtype) for name, (dtype, ndim) in SCHEMA.items()}
    out["masked_lm_positions"] = np.zeros((n, p), dtype=SCHEMA["masked_lm_positions"][0])
    out["masked_lm_ids"] = np.zeros((n, p), dtype=SCHEMA["masked_lm_ids"][0])
    for k, inst in enumerate(instances):
        length, m = len(inst.tokens), len(inst.masked_lm_positions)
        out["input_ids"][k, :length] = inst.tokens
        out["input_mask"][k, :length] = 1
        out["segment_ids"][k, inst.num_a:length] = 1
        out["masked_lm_positions"][k, :m] = inst.masked_lm_positions
        out["masked_lm_ids"][k, :m] = inst.masked_lm_ids
        out["next_sentence_labels"][k] = inst.is_random_next
    return out


# ---------------------------------------------------------------------------------------------
# The fast path used by `bertperf prepare`: the same pairs, masks drawn for all instances at once.
# ---------------------------------------------------------------------------------------------

def mask_arrays(input_ids: np.ndarray, lengths: np.ndarray, num_a: np.ndarray, cfg: InstanceConfig,
                special: SpecialIds, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Mask every row of `input_ids` [N, S] in place (rows are [CLS] A [SEP] B [SEP] of `lengths`
    [N] tokens, A [SEP] ending at column num_a - 1); return positions and original ids, [N, P] each,
    ascending and 0-padded.

    The same distribution as `create_masked_lm_predictions` without whole-word masking: each row
    gets k = min(P, max(1, round(length * masked_lm_prob)), length - 3) positions, a uniformly
    random k-subset of its non-[CLS]/[SEP] positions (the k smallest of iid uniform keys, as
    Google's shuffle-then-take), each replaced by [MASK] with probability 0.8, kept 0.1, a uniform
    random vocab id 0.1. Vectorized: memory ~ 12 bytes x N x S.
    """
    n, s = input_ids.shape
    p = cfg.max_predictions_per_seq
    lengths = lengths.astype(np.int64)
    col = np.arange(s)[None, :]
    cand = (col >= 1) & (col < lengths[:, None] - 1) & (col != (num_a.astype(np.int64) - 1)[:, None])
    k = np.minimum(np.minimum(p, np.maximum(1, np.round(lengths * cfg.masked_lm_prob).astype(np.int64))), lengths - 3)
    keys = rng.random((n, s), dtype=np.float32)
    keys[~cand] = 2.0
    part = np.argpartition(keys, p - 1, axis=1)[:, :p] if p < s else np.broadcast_to(np.arange(s), (n, s)).copy()
    order = np.argsort(np.take_along_axis(keys, part, axis=1), axis=1, kind="stable")
    chosen = np.take_along_axis(part, order, axis=1)  # [N, P] by ascending key
    valid = np.arange(p)[None, :] < k[:, None]
    positions = np.sort(np.where(valid, chosen, s), axis=1)
    valid = positions < s  # the sort moved the unused slots to the end
    rows = np.nonzero(valid)[0]
    cols = positions[valid]
    labels = np.zeros((n, p), dtype=np.int32)
    labels[valid] = input_ids[rows, cols]
    u = rng.random(len(rows))
    v = rng.random(len(rows))
    random_ids = rng.integers(0, special.vocab_size, len(rows))
    new = np.where(u < 0.8, special.mask, np.where(v < 0.5, labels[valid], random_ids))
    input_ids[rows, cols] = new
    positions[~valid] = 0
    return positions.astype(np.int32), labels


def create_instance_arrays(documents: Sequence[TokenizedDocument], cfg: InstanceConfig, special: SpecialIds,
                           dupe_factor: int, seed: int) -> dict[str, np.ndarray]:
    """All instances of `dupe_factor` passes, as shuffled shard arrays (dtypes of SCHEMA).

    Pairs come from Google's algorithm (`document_spans` on `random.Random(seed)`, documents
    shuffled first, truncation by `truncation_counts_fast`) as token spans of the corpus held as
    one array; rows are gathered from it; masks are drawn for all instances at once by
    `mask_arrays` on `numpy.random.default_rng(seed)` (with whole-word masking: Google's
    per-instance `create_masked_lm_predictions`); the instances are then shuffled. Same
    distribution as `create_training_instances`, not the same draws.
    Memory: ~ 4*T (corpus) + ~17*S*N (arrays and masking temporaries) bytes for T tokens and
    N instances; with the default flags N ~ dupe_factor * T / (0.9 * S).
    """
    from itertools import chain

    cfg.check()
    rng = random.Random(seed)
    np_rng = np.random.default_rng(seed)
    all_documents = [d for d in ([s for s in doc if s] for doc in documents) if d]
    rng.shuffle(all_documents)
    offsets = sentence_offsets(all_documents)
    total = offsets[-1][-1] if offsets else 0
    # The corpus as one array, then [CLS] and [SEP] at its end, so a row is a gather from it.
    source = np.empty(total + 2, dtype=np.int32)
    source[:total] = np.fromiter(chain.from_iterable(chain.from_iterable(all_documents)), dtype=np.int32, count=total)
    cls_at, sep_at = total, total + 1
    source[cls_at], source[sep_at] = special.cls, special.sep
    spans: list[Span] = []
    for _ in range(dupe_factor if all_documents else 0):
        for document_index in range(len(all_documents)):
            spans.extend(document_spans(offsets, document_index, cfg, rng, truncation_counts_fast))
    n, s, p = len(spans), cfg.max_seq_length, cfg.max_predictions_per_seq
    sp = np.asarray([x[:4] for x in spans], dtype=np.int64).reshape(n, 4)
    is_random = np.fromiter((x[4] for x in spans), dtype=np.int8, count=n)
    del spans
    la, lb = sp[:, 1] - sp[:, 0], sp[:, 3] - sp[:, 2]
    lengths = la + lb + 3
    na = la + 2
    col = np.arange(s)[None, :]
    real = col < lengths[:, None]
    input_ids = np.zeros((n, s), dtype=np.int32)
    for r in range(0, n, GATHER_ROWS):  # row chunks bound the int64 temporaries
        a0, b0 = sp[r:r + GATHER_ROWS, 0:1], sp[r:r + GATHER_ROWS, 2:3]
        ra, rb = la[r:r + GATHER_ROWS, None], lb[r:r + GATHER_ROWS, None]
        index = np.where(col == 0, cls_at, np.where(col <= ra, a0 + col - 1,
                                                    np.where(col <= ra + rb + 1, b0 + col - ra - 2, sep_at)))
        index[col == ra + 1] = sep_at
        input_ids[r:r + GATHER_ROWS] = np.where(real[r:r + GATHER_ROWS], source[index], 0)
    del sp
    if cfg.do_whole_word_mask and special.is_subword is not None:
        positions = np.zeros((n, p), dtype=np.int32)
        labels = np.zeros((n, p), dtype=np.int32)
        for r in range(n):
            out, pos, lab = create_masked_lm_predictions(input_ids[r, :lengths[r]].tolist(), cfg, special, rng)
            input_ids[r, :lengths[r]] = out
            positions[r, :len(pos)] = pos
            labels[r, :len(lab)] = lab
    else:
        positions, labels = mask_arrays(input_ids, lengths, na, cfg, special, np_rng)
    perm = np_rng.permutation(n)
    out = {
        "input_ids": input_ids[perm],
        "input_mask": real[perm].astype(np.int8),
        "segment_ids": ((col >= na[:, None]) & real)[perm].astype(np.int8),
        "masked_lm_positions": positions[perm],
        "masked_lm_ids": labels[perm],
        "next_sentence_labels": is_random[perm],
    }
    return out
