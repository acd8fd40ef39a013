"""PretrainingDataset: the contracted items, across several shards, and its errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bertperf.data.loader import PretrainingDataset
from bertperf.data.shards import SCHEMA, ShardError, find_shards, write_shard
from tests.data.test_shards import random_arrays


@pytest.mark.parametrize("sizes,s,p", [([5], 16, 3), ([3, 0, 7, 1], 32, 5), ([2, 2], 512, 80)])
def test_items_match_shards(tmp_path: Path, sizes, s, p):
    parts = [random_arrays(n, s, p, seed=k) for k, n in enumerate(sizes)]
    for k, a in enumerate(parts):
        write_shard(tmp_path / f"shard_{k:05d}.hdf5", a)
    ds = PretrainingDataset(find_shards(tmp_path), vocab_size=1000)
    whole = {name: np.concatenate([a[name] for a in parts]) for name in SCHEMA}
    assert len(ds) == sum(sizes) and ds.seq_length == s and ds.max_predictions == p
    for i in list(range(len(ds))) + [-1]:
        item = ds[i]
        assert set(item) == set(SCHEMA)
        for name, t in item.items():
            assert t.dtype == torch.int64
            assert t.shape == ((s,) if name in ("input_ids", "segment_ids", "input_mask") else
                               (p,) if name.startswith("masked") else ())
            np.testing.assert_array_equal(t.numpy(), whole[name][i])
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_default_collate_stacks(shard_set):
    ds = PretrainingDataset([str(f) for f in shard_set.files], vocab_size=30522)
    assert len(ds) == len(shard_set.arrays["next_sentence_labels"])
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=8, shuffle=False)))
    assert batch["input_ids"].shape == (8, 128) and batch["masked_lm_positions"].shape == (8, 20)
    assert batch["next_sentence_labels"].shape == (8,)
    assert all(t.dtype == torch.int64 for t in batch.values())
    np.testing.assert_array_equal(batch["input_ids"].numpy(), shard_set.arrays["input_ids"][:8])


def test_errors(tmp_path: Path):
    write_shard(tmp_path / "a.hdf5", random_arrays(4, 16, 3))
    write_shard(tmp_path / "b.hdf5", random_arrays(4, 32, 3))
    with pytest.raises(ShardError, match="b.hdf5.*sequence length 32"):
        PretrainingDataset([tmp_path / "a.hdf5", tmp_path / "b.hdf5"])
    with pytest.raises(ShardError, match=r"a.hdf5.*'input_ids'.*vocab size 10\b"):
        PretrainingDataset([tmp_path / "a.hdf5"], vocab_size=10)
    with pytest.raises(ShardError, match="no shard files"):
        PretrainingDataset([])
