"""A torch Dataset over pre-training HDF5 shards (see `bertperf.data.shards` for the schema).

All shards are read into memory once, validated (shapes, dtypes, ids < vocab_size), and kept in
their compact stored dtypes; items are converted to int64 tensors on access. Memory is about
N * (6*S + 8*P + 1) bytes: ~0.9 GB for a million instances at S=128, P=20. For larger corpora give
each rank its own subset of the files.
"""
from __future__ import annotations

import bisect
import os
from typing import Sequence

import numpy as np
import torch

from bertperf.data.shards import SCHEMA, ShardError, read_shard


class PretrainingDataset(torch.utils.data.Dataset):
    """Masked-LM + next-sentence instances from one or more shards.

    `__getitem__(i)` returns int64 tensors: input_ids [S], segment_ids [S], input_mask [S],
    masked_lm_positions [P], masked_lm_ids [P], next_sentence_labels [] (scalar). The default
    DataLoader collate stacks them into [B, S], [B, P] and [B]. Every shard must have the same S
    and P (ShardError otherwise); empty shards are allowed and contribute nothing.
    """

    def __init__(self, files: Sequence[str | os.PathLike], vocab_size: int | None = None):
        files = [os.fspath(f) for f in ([files] if isinstance(files, (str, os.PathLike)) else files)]
        if not files:
            raise ShardError("no shard files given to PretrainingDataset; create them with `bertperf prepare`")
        self.files = files
        self._shards: list[dict[str, np.ndarray]] = []
        self._offsets: list[int] = []  # cumulative start index of each non-empty shard
        total = 0
        seq_length = max_predictions = None
        for path in files:
            arrays = read_shard(path, vocab_size=vocab_size)
            s, p = arrays["input_ids"].shape[1], arrays["masked_lm_positions"].shape[1]
            if seq_length is None:
                seq_length, max_predictions, first = s, p, path
            elif (s, p) != (seq_length, max_predictions):
                raise ShardError(f"{path}: sequence length {s} / max predictions {p} differ from "
                                 f"{seq_length} / {max_predictions} in {first}; use shards from one `prepare` run")
            n = arrays["next_sentence_labels"].shape[0]
            if n:
                self._shards.append(arrays)
                self._offsets.append(total)
                total += n
        self._len = total
        self._seq_length = int(seq_length)
        self._max_predictions = int(max_predictions)

    @property
    def seq_length(self) -> int:
        """S, the padded sequence length of every instance."""
        return self._seq_length

    @property
    def max_predictions(self) -> int:
        """P, the padded number of masked positions per instance."""
        return self._max_predictions

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        i = int(i)
        if i < 0:
            i += self._len
        if not 0 <= i < self._len:
            raise IndexError(f"index {i} out of range for a dataset of {self._len} instances")
        k = bisect.bisect_right(self._offsets, i) - 1
        shard, j = self._shards[k], i - self._offsets[k]
        return {name: torch.from_numpy(np.asarray(shard[name][j], dtype=np.int64)) for name in SCHEMA}
