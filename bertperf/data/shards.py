"""HDF5 pre-training shards in NVIDIA DeepLearningExamples' schema.

One shard holds N instances of sequence length S with at most P masked positions each, as
gzip-compressed datasets (exactly what DLE's `create_pretraining_data.py` writes and its
`run_pretraining.py` reads):

    input_ids            int32 [N, S]   token ids, 0-padded ([PAD] = 0)
    input_mask           int8  [N, S]   1 for real tokens, 0 for padding
    segment_ids          int8  [N, S]   0 for [CLS] A [SEP], 1 for B [SEP], 0 for padding
    masked_lm_positions  int32 [N, P]   positions of the masked tokens, ascending, 0-padded
                                        (position 0 is [CLS], never masked: the first 0 ends the list)
    masked_lm_ids        int32 [N, P]   original token ids at those positions, 0-padded
    next_sentence_labels int8  [N]      1 when segment B is a random next (Google's is_random_next)

Writes are atomic (temporary file in the same directory, then `os.replace`) and deterministic
(`track_times=False`): the same arrays give the same bytes.
"""
from __future__ import annotations

import glob
import os
from typing import Mapping

import numpy as np

from bertperf.utils.atomic import atomic_path
from bertperf.utils.errors import BertperfError

# name -> (stored dtype, number of dimensions)
SCHEMA: dict[str, tuple[np.dtype, int]] = {
    "input_ids": (np.dtype(np.int32), 2),
    "input_mask": (np.dtype(np.int8), 2),
    "segment_ids": (np.dtype(np.int8), 2),
    "masked_lm_positions": (np.dtype(np.int32), 2),
    "masked_lm_ids": (np.dtype(np.int32), 2),
    "next_sentence_labels": (np.dtype(np.int8), 1),
}

SEQ_KEYS = ("input_ids", "input_mask", "segment_ids")  # [N, S]
PRED_KEYS = ("masked_lm_positions", "masked_lm_ids")  # [N, P]
BINARY_KEYS = ("input_mask", "segment_ids", "next_sentence_labels")  # values in {0, 1}
SHARD_EXTENSIONS = (".hdf5", ".h5")
GZIP_LEVEL = 4


class ShardError(BertperfError):
    """A shard is missing, unreadable or does not follow SCHEMA."""


def validate(arrays: Mapping[str, np.ndarray], where: str, vocab_size: int | None = None) -> dict[str, np.ndarray]:
    """Check `arrays` against SCHEMA and return them cast to the schema dtypes.

    Checks: every dataset present, integer kind, right ndim, one N for all, one S for the
    [N, S] datasets, one P for the [N, P] datasets, P <= S, values in range (0/1 flags,
    0 <= positions < S, 0 <= ids < vocab_size when given) and representable in the stored
    dtype. `where` names the file in error messages. Raises ShardError.
    """
    out: dict[str, np.ndarray] = {}
    for name, (dtype, ndim) in SCHEMA.items():
        if name not in arrays:
            raise ShardError(f"{where}: dataset '{name}' is missing (a pre-training shard needs {sorted(SCHEMA)}); "
                             "rebuild it with `bertperf prepare`")
        a = np.asarray(arrays[name])
        if a.dtype.kind not in "iu":
            raise ShardError(f"{where}: dataset '{name}' has dtype {a.dtype}, expected an integer type ({dtype})")
        if a.ndim != ndim:
            raise ShardError(f"{where}: dataset '{name}' has shape {a.shape}, expected {ndim} dimensions")
        if a.size:
            info = np.iinfo(dtype)
            lo, hi = int(a.min()), int(a.max())
            if lo < info.min or hi > info.max:
                raise ShardError(f"{where}: dataset '{name}' has values in [{lo}, {hi}], which do not fit {dtype}")
        out[name] = a.astype(dtype, copy=False)

    n = out["next_sentence_labels"].shape[0]
    for name in SEQ_KEYS + PRED_KEYS:
        if out[name].shape[0] != n:
            raise ShardError(f"{where}: dataset '{name}' has {out[name].shape[0]} rows but "
                             f"'next_sentence_labels' has {n}: inconsistent shapes")
    s = out["input_ids"].shape[1]
    for name in SEQ_KEYS:
        if out[name].shape[1] != s:
            raise ShardError(f"{where}: dataset '{name}' has shape {out[name].shape}, expected [{n}, {s}] "
                             "like 'input_ids': inconsistent shapes")
    p = out["masked_lm_positions"].shape[1]
    if out["masked_lm_ids"].shape[1] != p:
        raise ShardError(f"{where}: dataset 'masked_lm_ids' has shape {out['masked_lm_ids'].shape}, expected "
                         f"[{n}, {p}] like 'masked_lm_positions': inconsistent shapes")
    if n == 0:
        return out

    for name in BINARY_KEYS:
        if out[name].min() < 0 or out[name].max() > 1:
            raise ShardError(f"{where}: dataset '{name}' must hold only 0 and 1")
    pos = out["masked_lm_positions"]
    if pos.min() < 0 or pos.max() >= s:
        raise ShardError(f"{where}: dataset 'masked_lm_positions' has values outside [0, {s}) "
                         f"(sequence length {s})")
    for name in ("input_ids", "masked_lm_ids"):
        a = out[name]
        if a.min() < 0:
            raise ShardError(f"{where}: dataset '{name}' has negative token ids")
        if vocab_size is not None and a.max() >= vocab_size:
            raise ShardError(f"{where}: dataset '{name}' has token id {int(a.max())} >= vocab size {vocab_size}: "
                             "the shard was built with another vocab; rebuild it with the same vocab.txt")
    return out


def write_shard(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> None:
    """Validate `arrays` against SCHEMA and write them as gzip datasets to `path`, atomically.

    The file is written to a temporary name in the destination directory and renamed over
    `path`, so readers never see a half-written shard. Output bytes depend only on the arrays.
    """
    import h5py

    path = os.fspath(path)
    data = validate(arrays, where=path)
    with atomic_path(path) as tmp, h5py.File(tmp, "w", track_order=False) as f:
        for name in SCHEMA:
            a = data[name]
            f.create_dataset(name, data=a, dtype=a.dtype, compression="gzip",
                             compression_opts=GZIP_LEVEL, track_times=False)


def read_shard(path: str | os.PathLike, vocab_size: int | None = None) -> dict[str, np.ndarray]:
    """Read every dataset of a shard into memory, validated and cast to the SCHEMA dtypes.

    Raises ShardError naming the file (and the dataset) when the file is missing, is not
    HDF5, lacks a dataset, has inconsistent shapes or holds ids >= `vocab_size`.
    """
    import h5py

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ShardError(f"{path}: shard file not found")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ShardError(f"{path}: not a readable HDF5 shard ({e.__class__.__name__}: {e}); "
                         "rebuild it with `bertperf prepare`") from None
    arrays: dict[str, np.ndarray] = {}
    with f:
        for name in SCHEMA:
            if name not in f:
                continue  # validate() reports it
            obj = f[name]
            if not isinstance(obj, h5py.Dataset):
                raise ShardError(f"{path}: '{name}' is a {type(obj).__name__}, expected a dataset")
            try:
                arrays[name] = obj[()]
            except OSError as e:
                raise ShardError(f"{path}: dataset '{name}' cannot be read ({e}); the file is corrupt") from None
    return validate(arrays, where=path, vocab_size=vocab_size)


def check_metadata(path: str | os.PathLike) -> tuple[int, int, int]:
    """(N, S, P) of a shard after checking its metadata only (no data is read or decompressed):
    the file opens as HDF5 (a truncated file does not: HDF5 compares its size with the end address
    stored in the superblock), every SCHEMA dataset is present with an integer dtype and its
    number of dimensions, and the shapes agree ([N, S], [N, P], [N]). Values (ids < vocab size,
    0/1 flags, positions < S) are checked by `read_shard`. Raises ShardError naming the file."""
    import h5py

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ShardError(f"{path}: shard file not found")
    shapes: dict[str, tuple[int, ...]] = {}
    try:
        with h5py.File(path, "r") as f:
            for name, (dtype, ndim) in SCHEMA.items():
                obj = f.get(name)
                if obj is None:
                    raise ShardError(f"{path}: dataset '{name}' is missing (a pre-training shard needs "
                                     f"{sorted(SCHEMA)}); rebuild it with `bertperf prepare`")
                if not isinstance(obj, h5py.Dataset):
                    raise ShardError(f"{path}: '{name}' is a {type(obj).__name__}, expected a dataset")
                if obj.dtype.kind not in "iu":
                    raise ShardError(f"{path}: dataset '{name}' has dtype {obj.dtype}, expected an integer type "
                                     f"({dtype})")
                if len(obj.shape) != ndim:
                    raise ShardError(f"{path}: dataset '{name}' has shape {obj.shape}, expected {ndim} dimensions")
                shapes[name] = obj.shape
    except OSError as e:
        raise ShardError(f"{path}: not a readable HDF5 shard ({e.__class__.__name__}: {e}); "
                         "rebuild it with `bertperf prepare`") from None
    n, s, p = shapes["next_sentence_labels"][0], shapes["input_ids"][1], shapes["masked_lm_positions"][1]
    for name, expected in [(k, (n, s)) for k in SEQ_KEYS] + [(k, (n, p)) for k in PRED_KEYS]:
        if shapes[name] != expected:
            raise ShardError(f"{path}: dataset '{name}' has shape {shapes[name]}, expected {list(expected)} "
                             "(next_sentence_labels [N], input_ids [N, S], masked_lm_positions [N, P]): "
                             "inconsistent shapes")
    return int(n), int(s), int(p)


def shard_length(path: str | os.PathLike) -> int:
    """Number of instances N in a shard, from its metadata only (no validation)."""
    import h5py

    path = os.fspath(path)
    try:
        with h5py.File(path, "r") as f:
            return int(f["next_sentence_labels"].shape[0])
    except (OSError, KeyError) as e:
        raise ShardError(f"{path}: cannot read 'next_sentence_labels' ({e})") from None


def find_shards(path: str | os.PathLike) -> list[str]:
    """A directory -> its *.hdf5 / *.h5 files, sorted; a file -> [file]. Nothing found -> ShardError."""
    path = os.fspath(path)
    if os.path.isfile(path):
        return [path]
    if os.path.isdir(path):
        files = sorted(f for ext in SHARD_EXTENSIONS for f in glob.glob(os.path.join(path, "*" + ext))
                       if os.path.isfile(f))
        if not files:
            raise ShardError(f"{path}: no *.hdf5 or *.h5 shards in this directory; create them with `bertperf prepare`")
        return files
    raise ShardError(f"{path}: no such shard file or directory; create shards with `bertperf prepare`")


def main(argv: list[str] | None = None) -> int:
    """`python -m bertperf.data.shards PATH... [--vocab_size V]`: validate shards, print N, S, P of each."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m bertperf.data.shards",
                                description="Check pre-training HDF5 shards against the schema and print their sizes.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="shard files or directories of *.hdf5 / *.h5 shards")
    p.add_argument("--vocab_size", type=int, default=None, help="also check that every token id is below this")
    args = p.parse_args(argv)
    total = 0
    for path in args.paths:
        for f in find_shards(path):
            a = read_shard(f, vocab_size=args.vocab_size)
            n, s = a["input_ids"].shape
            print(f"{f}: N={n} S={s} P={a['masked_lm_positions'].shape[1]} "
                  f"random_next={a['next_sentence_labels'].mean() if n else 0:.3f}")
            total += n
    print(f"{total} instances")
    return 0


if __name__ == "__main__":
    import sys

    from bertperf.utils.errors import run_cli

    sys.exit(run_cli(lambda: main(), prog="bertperf.data.shards"))
