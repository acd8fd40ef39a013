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
from typing import Sequence

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


def truncate_seq_pair(tokens_a: list[int], tokens_b: list[int], max_num_tokens: int, rng: random.Random) -> None:
    """Shorten the pair in place to `max_num_tokens` in total: one token at a time from the longer
    one (B on ties), from the front or the back at random (to avoid a bias towards the end)."""
    while len(tokens_a) + len(tokens_b) > max_num_tokens:
        trunc = tokens_a if len(tokens_a) > len(tokens_b) else tokens_b
        assert len(trunc) >= 1
        if rng.random() < 0.5:
            del trunc[0]
        else:
            trunc.pop()


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


def create_instances_from_document(all_documents: Sequence[TokenizedDocument], document_index: int,
                                   cfg: InstanceConfig, special: SpecialIds,
                                   rng: random.Random) -> list[TrainingInstance]:
    """Instances whose segment A comes from `all_documents[document_index]` (Google's algorithm)."""
    document = all_documents[document_index]
    max_num_tokens = cfg.max_seq_length - 3
    target_seq_length = max_num_tokens
    if rng.random() < cfg.short_seq_prob:
        target_seq_length = rng.randint(2, max_num_tokens)

    instances: list[TrainingInstance] = []
    chunk: list[list[int]] = []
    chunk_length = 0
    i = 0
    while i < len(document):
        segment = document[i]
        chunk.append(segment)
        chunk_length += len(segment)
        if i == len(document) - 1 or chunk_length >= target_seq_length:
            if chunk:
                a_end = rng.randint(1, len(chunk) - 1) if len(chunk) >= 2 else 1
                tokens_a = [t for seg in chunk[:a_end] for t in seg]
                tokens_b: list[int] = []
                if len(chunk) == 1 or rng.random() < 0.5:
                    is_random_next = True
                    target_b_length = target_seq_length - len(tokens_a)
                    # Up to 10 tries for another document (the same one is possible when all fail).
                    for _ in range(10):
                        random_document_index = rng.randint(0, len(all_documents) - 1)
                        if random_document_index != document_index:
                            break
                    random_document = all_documents[random_document_index]
                    random_start = rng.randint(0, len(random_document) - 1)
                    for j in range(random_start, len(random_document)):
                        tokens_b.extend(random_document[j])
                        if len(tokens_b) >= target_b_length:
                            break
                    i -= len(chunk) - a_end  # put the unused sentences back
                else:
                    is_random_next = False
                    tokens_b = [t for seg in chunk[a_end:] for t in seg]
                truncate_seq_pair(tokens_a, tokens_b, max_num_tokens, rng)
                assert tokens_a and tokens_b

                tokens = [special.cls, *tokens_a, special.sep, *tokens_b, special.sep]
                output, positions, labels = create_masked_lm_predictions(tokens, cfg, special, rng)
                instances.append(TrainingInstance(
                    tokens=np.asarray(output, dtype=np.int32), num_a=len(tokens_a) + 2,
                    masked_lm_positions=np.asarray(positions, dtype=np.int32),
                    masked_lm_ids=np.asarray(labels, dtype=np.int32), is_random_next=is_random_next))
            chunk = []
            chunk_length = 0
        i += 1
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
    for _ in range(dupe_factor):
        for document_index in range(len(all_documents)):
            instances.extend(create_instances_from_document(all_documents, document_index, cfg, special, rng))
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
