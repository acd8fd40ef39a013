"""PretrainingDataset (the contracted items, errors) and ShardedLoader (order, ranks, exact resume, memory)."""
from __future__ import annotations

import json
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

from bertperf.data import loader as loader_mod
from bertperf.data.loader import PretrainingDataset, ShardedLoader
from bertperf.data.shards import SCHEMA, ShardError, find_shards, write_shard
from bertperf.utils.errors import BertperfError
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


# ---------------------------------------------------------------------------------------------
# ShardedLoader
# ---------------------------------------------------------------------------------------------

S, P = 12, 3


def id_shards(tmp_path: Path, sizes: list[int], seed: int = 0) -> tuple[list[str], dict[str, np.ndarray]]:
    """Shards whose instance g (global index in file order) carries g in input_ids[:, 1:3]
    (g % 100, g // 100); returns the files and all arrays concatenated."""
    files, parts, g = [], [], 0
    for k, n in enumerate(sizes):
        a = random_arrays(n, S, P, vocab=1000, seed=seed + k)
        ids = np.arange(g, g + n)
        a["input_ids"][:, 1], a["input_ids"][:, 2] = ids % 100 + 1, ids // 100 + 1
        path = tmp_path / f"part_{k:03d}.hdf5"
        write_shard(path, a)
        files.append(str(path))
        parts.append(a)
        g += n
    return files, {name: np.concatenate([a[name] for a in parts]) for name in SCHEMA}


def sample_ids(batch: dict[str, torch.Tensor]) -> list[int]:
    ids = batch["input_ids"].numpy()
    return ((ids[:, 1] - 1) + 100 * (ids[:, 2] - 1)).tolist()


def take(loader: ShardedLoader, n_batches: int) -> list[dict[str, torch.Tensor]]:
    it = iter(loader)
    return [next(it) for _ in range(n_batches)]


SIZES = [7, 0, 13, 5, 1, 9]  # N = 35, with an empty shard and a one-instance shard


def test_batches_are_collated_instances(tmp_path: Path):
    files, whole = id_shards(tmp_path, SIZES)
    ld = ShardedLoader(files, rank=0, world_size=1, micro_batch=4, seed=3, vocab_size=1000)
    assert (ld.seq_length, ld.max_predictions, ld.num_samples, ld.rounds_per_epoch) == (S, P, 35, 35)
    assert ShardedLoader(str(tmp_path), rank=0, world_size=1, micro_batch=4, seed=3).files == files  # a directory
    ds = PretrainingDataset(files)
    for batch in take(ld, 12):
        assert list(batch) == list(SCHEMA)
        ids = sample_ids(batch)
        ref = torch.utils.data.default_collate([ds[i] for i in ids])
        assert list(ref) == list(batch)
        for name in SCHEMA:
            assert batch[name].dtype == torch.int64 and batch[name].shape == ref[name].shape
            assert torch.equal(batch[name], ref[name])


@pytest.mark.parametrize("world_size,micro_batch", [(1, 1), (1, 4), (2, 3), (3, 2), (4, 5)])
def test_ranks_disjoint_and_epoch_covers_all(tmp_path: Path, world_size: int, micro_batch: int):
    files, _ = id_shards(tmp_path, SIZES)
    n = sum(SIZES)
    rounds = n // world_size
    epochs = 3
    streams = []
    for r in range(world_size):
        ld = ShardedLoader(files, rank=r, world_size=world_size, micro_batch=micro_batch, seed=11)
        need = -(-epochs * rounds // micro_batch)
        streams.append([i for b in take(ld, need) for i in sample_ids(b)][:epochs * rounds])
    orders = []
    for e in range(epochs):
        per_rank = [s[e * rounds:(e + 1) * rounds] for s in streams]
        seen = [i for s in per_rank for i in s]
        assert len(seen) == len(set(seen)) == rounds * world_size  # disjoint, no repeats within an epoch
        assert set(seen) <= set(range(n))
        # interleaved by rounds, the ranks' streams are the epoch's global stream (remainder skipped)
        orders.append([per_rank[r][j] for j in range(rounds) for r in range(world_size)])
    assert orders[0] != orders[1] != orders[2]  # a fresh shuffle each epoch
    if world_size == 1:
        assert all(sorted(o) == list(range(n)) for o in orders)


def test_order_is_shard_order_then_row_permutation(tmp_path: Path):
    files, _ = id_shards(tmp_path, SIZES)
    starts = np.concatenate([[0], np.cumsum(SIZES)])
    ld = ShardedLoader(files, rank=0, world_size=1, micro_batch=5, seed=7)
    stream = [i for b in take(ld, 7) for i in sample_ids(b)]
    expected = [int(starts[k] + j) for k in ld.shard_order(0) for j in ld.row_order(0, int(k))]
    assert stream == expected
    assert sorted(ld.shard_order(0).tolist()) == [0, 2, 3, 4, 5]  # the empty shard is never visited


def test_deterministic_and_seeded(tmp_path: Path):
    files, _ = id_shards(tmp_path, SIZES)
    a = [sample_ids(b) for b in take(ShardedLoader(files, rank=1, world_size=2, micro_batch=3, seed=5), 15)]
    b = [sample_ids(b) for b in take(ShardedLoader(files, rank=1, world_size=2, micro_batch=3, seed=5), 15)]
    c = [sample_ids(b) for b in take(ShardedLoader(files, rank=1, world_size=2, micro_batch=3, seed=6), 15)]
    assert a == b and a != c


@pytest.mark.parametrize("world_size,micro_batch", [(1, 4), (2, 3), (3, 5)])
def test_resume_at_every_batch_is_exact(tmp_path: Path, world_size: int, micro_batch: int):
    files, _ = id_shards(tmp_path, SIZES)
    total = 3 * sum(SIZES) // (world_size * micro_batch) + 2  # crosses epoch boundaries
    for r in range(world_size):
        ld = ShardedLoader(files, rank=r, world_size=world_size, micro_batch=micro_batch, seed=9)
        it = iter(ld)
        ref, states = [], [ld.state_dict()]
        for _ in range(total):
            ref.append(sample_ids(next(it)))
            states.append(json.loads(json.dumps(ld.state_dict())))  # JSON-able
        for t in range(total):
            resumed = ShardedLoader(files, rank=r, world_size=world_size, micro_batch=micro_batch, seed=0,
                                    state=states[t])  # the state's seed wins
            got = [sample_ids(b) for b in take(resumed, min(3, total - t))]
            assert got == ref[t:t + len(got)], f"rank {r}, resume after batch {t}"
            assert resumed.state_dict() == states[t + len(got)]
            assert ld.advance(states[t], batches=total - t) == states[total]  # arithmetic = iterated
        # every rank reports the same position after the same number of batches
        if r == 0:
            states0 = states
        else:
            assert states == states0


def test_resume_with_another_world_size(tmp_path: Path):
    """The offset is global: 2 ranks resumed from a 3-rank state continue the same global stream."""
    files, _ = id_shards(tmp_path, SIZES)
    three = [ShardedLoader(files, rank=r, world_size=3, micro_batch=2, seed=4) for r in range(3)]
    seen = [sample_ids(b) for ld in three for b in take(ld, 2)]
    state = three[0].state_dict()
    assert state["offset"] == 12 and state["epoch"] == 0
    full = ShardedLoader(files, rank=0, world_size=1, micro_batch=35, seed=4)
    stream = sample_ids(take(full, 1)[0])
    two = [ShardedLoader(files, rank=r, world_size=2, micro_batch=2, seed=1, state=state) for r in range(2)]
    nxt = [sample_ids(take(ld, 1)[0]) for ld in two]
    assert nxt == [[stream[12], stream[14]], [stream[13], stream[15]]]
    assert set(stream[:12]) == {i for s in seen for i in s}


def test_memory_bounded_to_one_shard(tmp_path: Path, monkeypatch):
    files, _ = id_shards(tmp_path, [6, 6, 6, 6, 6])
    real = loader_mod.read_shard
    refs: list[weakref.ref] = []
    peak = [0]

    def alive() -> int:
        return sum(r() is not None for r in refs)
    reads = [0]

    class Shard(dict):
        pass

    def counting_read(path, vocab_size=None):
        shard = Shard(real(path, vocab_size=vocab_size))
        refs.append(weakref.ref(shard))
        reads[0] += 1
        peak[0] = max(peak[0], alive())
        return shard

    monkeypatch.setattr(loader_mod, "read_shard", counting_read)
    ld = ShardedLoader(files, rank=0, world_size=1, micro_batch=4, seed=1)
    for b in take(ld, 30):  # 4 epochs of 30 samples
        peak[0] = max(peak[0], alive())
    assert reads[0] == 20 and peak[0] == 1  # each shard is freed before the next one is read


def test_loader_errors(tmp_path: Path):
    files, _ = id_shards(tmp_path, [4, 4])
    ld = ShardedLoader(files, rank=0, world_size=1, micro_batch=2, seed=0)
    with pytest.raises(BertperfError, match="saved for 9 samples.*hold 8"):
        ShardedLoader(files, rank=0, world_size=1, micro_batch=2, seed=0, state={**ld.state_dict(), "num_samples": 9})
    with pytest.raises(BertperfError, match="malformed"):
        ShardedLoader(files, rank=0, world_size=1, micro_batch=2, seed=0, state={"epoch": 0})
    write_shard(tmp_path / "other.hdf5", random_arrays(3, 2 * S, P))
    with pytest.raises(ShardError, match="other.hdf5.*sequence length 24"):
        ShardedLoader(files + [str(tmp_path / "other.hdf5")], rank=0, world_size=1, micro_batch=2, seed=0)
    with pytest.raises(BertperfError, match="fewer than the 9 ranks"):
        ShardedLoader(files, rank=0, world_size=9, micro_batch=2, seed=0)
    with pytest.raises(ShardError, match="no shard files"):
        ShardedLoader([], rank=0, world_size=1, micro_batch=2, seed=0)
    # a shard whose ids exceed the vocab is reported (file, dataset) when it is loaded
    with pytest.raises(ShardError, match=r"part_00\d.hdf5.*vocab size 5\b"):
        take(ShardedLoader(files, rank=0, world_size=1, micro_batch=2, seed=0, vocab_size=5), 1)
    with pytest.raises(ShardError, match=r"part_00\d.hdf5.*vocab size 5\b"):
        ShardedLoader(files, rank=0, world_size=1, micro_batch=2, seed=0, vocab_size=5).check_all()
    with pytest.raises(ShardError, match=r"part_000.hdf5.*vocab size 5\b"):
        ShardedLoader(files, rank=0, world_size=1, micro_batch=2, seed=0, vocab_size=5).check_all(full=True)
    ShardedLoader(files, rank=0, world_size=1, micro_batch=2, seed=0, vocab_size=1000).check_all()
    ShardedLoader(files, rank=0, world_size=1, micro_batch=2, seed=0, vocab_size=1000).check_all(full=True)
    # a truncated shard: named at construction (metadata unreadable) or when loaded
    data = Path(files[1]).read_bytes()
    Path(files[1]).write_bytes(data[: len(data) // 2])
    with pytest.raises(ShardError, match="part_001.hdf5"):
        take(ShardedLoader(files, rank=0, world_size=1, micro_batch=8, seed=0), 1)
    with pytest.raises(ShardError, match="part_001.hdf5"):
        ShardedLoader(files, rank=0, world_size=1, micro_batch=8, seed=0).check_all()


def count_reads(monkeypatch) -> list[str]:
    """Record the paths `loader.read_shard` reads (the real read still happens)."""
    real, paths = loader_mod.read_shard, []
    monkeypatch.setattr(loader_mod, "read_shard", lambda path, vocab_size=None: paths.append(path) or
                        real(path, vocab_size=vocab_size))
    return paths


@pytest.mark.parametrize("world_size,batches", [(1, 0), (2, 0), (3, 0), (2, 5), (3, 3), (1, 8), (2, 9),
                                                       (1, 35), (2, 17), (3, 11)])
def test_check_all_reads_only_the_first_shard_this_rank_trains_on(tmp_path: Path, monkeypatch, world_size, batches):
    """Start-up reads one shard per rank, not the corpus: the one its first batch comes from, from
    any resume state (also one saved at an epoch's last round), and only once."""
    files, _ = id_shards(tmp_path, SIZES)
    for rank in range(world_size):
        ld = ShardedLoader(files, rank=rank, world_size=world_size, micro_batch=2, seed=5, vocab_size=1000)
        state = ld.advance(batches=batches)
        paths = count_reads(monkeypatch)
        resumed = ShardedLoader(files, rank=rank, world_size=world_size, micro_batch=2, seed=5, vocab_size=1000,
                                state=state)
        resumed.check_all()
        assert len(paths) == 1
        take(resumed, 1)
        # training started with the shard check_all read (it was handed over, so it is no longer
        # held) and did not read it again (a batch may go on into the next shard)
        assert resumed._checked is None and paths.count(paths[0]) == 1
        paths.clear()
        resumed.check_all(full=True)
        assert paths == files
        monkeypatch.undo()


def test_metadata_checked_for_every_shard_at_construction(tmp_path: Path):
    """Without reading data: a missing dataset, a float dataset, a wrong rank or inconsistent
    shapes in any shard stop the loader when it is built, naming the file and the dataset."""
    import h5py

    files, _ = id_shards(tmp_path, [4, 4, 4])
    good = ShardedLoader(files, rank=0, world_size=1, micro_batch=2, seed=0)
    assert good.num_samples == 12

    def broken(edit) -> str:
        path = tmp_path / "broken.hdf5"
        write_shard(path, random_arrays(4, S, P, vocab=1000))
        with h5py.File(path, "a") as f:
            edit(f)
        return str(path)

    cases = [
        (lambda f: f.__delitem__("segment_ids"), r"broken.hdf5: dataset 'segment_ids' is missing"),
        (lambda f: (f.__delitem__("input_mask"), f.create_dataset("input_mask", data=np.ones((4, S), np.float32))),
         r"broken.hdf5: dataset 'input_mask' has dtype float32"),
        (lambda f: (f.__delitem__("next_sentence_labels"), f.create_dataset("next_sentence_labels",
                                                                             data=np.zeros((4, 1), np.int8))),
         r"broken.hdf5: dataset 'next_sentence_labels' has shape \(4, 1\), expected 1 dimensions"),
        (lambda f: (f.__delitem__("masked_lm_ids"), f.create_dataset("masked_lm_ids", data=np.zeros((4, P + 1),
                                                                                                   np.int32))),
         r"broken.hdf5: dataset 'masked_lm_ids' has shape \(4, 4\), expected \[4, 3\]"),
        (lambda f: (f.__delitem__("segment_ids"), f.create_dataset("segment_ids", data=np.zeros((3, S), np.int8))),
         r"broken.hdf5: dataset 'segment_ids' has shape \(3, 12\), expected \[4, 12\]"),
    ]
    for edit, message in cases:
        with pytest.raises(ShardError, match=message):
            ShardedLoader(files + [broken(edit)], rank=0, world_size=1, micro_batch=2, seed=0)
