"""HDF5 shard schema, atomic deterministic writes and validation errors."""
from __future__ import annotations

import hashlib
from pathlib import Path

import h5py
import numpy as np
import pytest

from bertperf.data import shards
from bertperf.data.shards import SCHEMA, ShardError, find_shards, read_shard, write_shard
from bertperf.utils.errors import BertperfError, run_cli

# NVIDIA DeepLearningExamples' schema, spelled out independently of SCHEMA.
DLE = {"input_ids": ("int32", 2), "input_mask": ("int8", 2), "segment_ids": ("int8", 2),
       "masked_lm_positions": ("int32", 2), "masked_lm_ids": ("int32", 2), "next_sentence_labels": ("int8", 1)}


def random_arrays(n: int, s: int, p: int, vocab: int = 1000, seed: int = 0) -> dict[str, np.ndarray]:
    r = np.random.default_rng(seed)
    lengths = r.integers(5, s + 1, n) if s >= 5 else np.full(n, s)
    mask = (np.arange(s)[None, :] < lengths[:, None]).astype(np.int64)
    pos = np.zeros((n, p), np.int64)
    for k in range(n):
        m = min(p, int(lengths[k]) - 1)
        pos[k, :m] = np.sort(r.choice(np.arange(1, lengths[k]), m, replace=False))
    return {
        "input_ids": r.integers(0, vocab, (n, s)) * mask,
        "input_mask": mask,
        "segment_ids": (np.arange(s)[None, :] >= lengths[:, None] // 2) * mask,
        "masked_lm_positions": pos,
        "masked_lm_ids": r.integers(1, vocab, (n, p)) * (pos > 0),
        "next_sentence_labels": r.integers(0, 2, n),
    }


def test_schema_is_dle():
    assert {k: (str(d), nd) for k, (d, nd) in SCHEMA.items()} == DLE


@pytest.mark.parametrize("n,s,p", [(1, 5, 1), (7, 16, 3), (33, 128, 20), (3, 512, 80), (0, 128, 20)])
def test_roundtrip_exact_dtypes_and_gzip(tmp_path: Path, n: int, s: int, p: int):
    arrays = random_arrays(n, s, p)
    path = tmp_path / "a.hdf5"
    write_shard(path, arrays)
    with h5py.File(path, "r") as f:
        assert set(f.keys()) == set(DLE)
        for name, (dtype, ndim) in DLE.items():
            ds = f[name]
            assert str(ds.dtype) == dtype and ds.ndim == ndim
            assert ds.compression == "gzip"
            np.testing.assert_array_equal(ds[()], arrays[name])
    got = read_shard(path, vocab_size=1000)
    for name in DLE:
        assert got[name].dtype == np.dtype(DLE[name][0])
        np.testing.assert_array_equal(got[name], arrays[name])
    assert [x.name for x in tmp_path.iterdir()] == ["a.hdf5"]  # no temporary file left behind


def test_writes_are_deterministic_and_atomic(tmp_path: Path, monkeypatch):
    arrays = random_arrays(20, 32, 5)
    write_shard(tmp_path / "a.hdf5", arrays)
    write_shard(tmp_path / "b.hdf5", arrays)
    digest = [hashlib.sha256((tmp_path / f).read_bytes()).hexdigest() for f in ("a.hdf5", "b.hdf5")]
    assert digest[0] == digest[1]

    # A failure while writing leaves the existing shard untouched and no temporary file.
    before = (tmp_path / "a.hdf5").read_bytes()

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(h5py.Group, "create_dataset", boom)
    with pytest.raises(RuntimeError):
        write_shard(tmp_path / "a.hdf5", random_arrays(20, 32, 5, seed=1))
    assert (tmp_path / "a.hdf5").read_bytes() == before
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a.hdf5", "b.hdf5"]


def _write_raw(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """Write datasets as given, bypassing validation (to build broken shards)."""
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            f.create_dataset(k, data=v)
    return path


def _one_line_error(capsys, fn) -> str:
    assert run_cli(fn, prog="t") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("t: error: "), err
    return err


def _broken(kind: str) -> dict[str, np.ndarray]:
    a = {k: v.astype(DLE[k][0]) for k, v in random_arrays(6, 16, 4).items()}
    if kind == "missing":
        del a["masked_lm_ids"]
    elif kind == "rows":
        a["segment_ids"] = a["segment_ids"][:5]
    elif kind == "seq":
        a["input_mask"] = np.ones((6, 15), np.int8)
    elif kind == "pred":
        a["masked_lm_ids"] = a["masked_lm_ids"][:, :3]
    elif kind == "float":
        a["input_ids"] = a["input_ids"].astype(np.float32)
    elif kind == "ndim":
        a["next_sentence_labels"] = a["next_sentence_labels"][:, None]
    elif kind == "vocab":
        a["input_ids"][2, 3] = 1000
    elif kind == "position":
        a["masked_lm_positions"][0, 0] = 16
    return a


@pytest.mark.parametrize("kind,dataset,words", [
    ("missing", "masked_lm_ids", "missing"),
    ("rows", "segment_ids", "inconsistent"),
    ("seq", "input_mask", "inconsistent"),
    ("pred", "masked_lm_ids", "inconsistent"),
    ("float", "input_ids", "integer"),
    ("ndim", "next_sentence_labels", "dimensions"),
    ("vocab", "input_ids", "vocab size 1000"),
    ("position", "masked_lm_positions", "outside"),
])
def test_bad_shard_gives_one_line_naming_file_and_dataset(tmp_path: Path, capsys, kind, dataset, words):
    path = _write_raw(tmp_path / f"{kind}.hdf5", _broken(kind))
    with pytest.raises(ShardError) as e:
        read_shard(path, vocab_size=1000)
    assert isinstance(e.value, BertperfError)
    err = _one_line_error(capsys, lambda: read_shard(path, vocab_size=1000) and 0)
    assert str(path) in err and f"'{dataset}'" in err and words in err
    if kind != "vocab":  # write_shard refuses the same arrays (it has no vocab size)
        with pytest.raises(ShardError):
            write_shard(tmp_path / "w.hdf5", _broken(kind))


def test_not_hdf5_and_missing_file(tmp_path: Path, capsys):
    junk = tmp_path / "junk.hdf5"
    junk.write_bytes(b"this is not an HDF5 file\n" * 10)
    err = _one_line_error(capsys, lambda: read_shard(junk) and 0)
    assert str(junk) in err and "HDF5" in err
    err = _one_line_error(capsys, lambda: read_shard(tmp_path / "none.hdf5") and 0)
    assert "none.hdf5" in err and "not found" in err


def test_find_shards(tmp_path: Path, capsys):
    for name in ("b.hdf5", "a.h5", "c.hdf5", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert find_shards(tmp_path) == [str(tmp_path / n) for n in ("a.h5", "b.hdf5", "c.hdf5")]
    assert find_shards(tmp_path / "c.hdf5") == [str(tmp_path / "c.hdf5")]
    empty = tmp_path / "empty"
    empty.mkdir()
    err = _one_line_error(capsys, lambda: find_shards(empty) and 0)
    assert str(empty) in err
    err = _one_line_error(capsys, lambda: find_shards(tmp_path / "nope") and 0)
    assert "nope" in err


def test_check_cli(tmp_path: Path, capsys):
    write_shard(tmp_path / "a.hdf5", random_arrays(9, 16, 4))
    assert shards.main([str(tmp_path), "--vocab_size", "1000"]) == 0
    assert "N=9 S=16 P=4" in capsys.readouterr().out
    err = _one_line_error(capsys, lambda: shards.main([str(tmp_path), "--vocab_size", "10"]))
    assert "a.hdf5" in err and "vocab size 10" in err
