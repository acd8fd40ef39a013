"""Reading pre-training HDF5 shards (schema in `bertperf.data.shards`) for training.

Two readers:

* `PretrainingDataset`: a map-style torch Dataset holding every shard in memory (about
  N * (6*S + 8*P + 1) bytes: ~0.9 GB for a million instances at S=128, P=20). Simple; fine for
  small corpora and tests.
* `ShardedLoader`: a streaming, shuffling, distributed, exactly resumable iterator of batches that
  keeps about one shard per rank in memory, whatever the corpus size.

ShardedLoader
-------------
    loader = ShardedLoader(files, rank=r, world_size=w, micro_batch=b, seed=s, vocab_size=v, state=st)
    for batch in loader:            # infinite: epoch after epoch
        ...                         # batch: dict of int64 tensors, exactly as the default collate
        st = loader.state_dict()    # of PretrainingDataset gives them: input_ids, input_mask,
                                    # segment_ids [B, S], masked_lm_positions, masked_lm_ids [B, P],
                                    # next_sentence_labels [B]

*Order.* Epoch ``e`` visits the non-empty shards in the order
``default_rng([seed, e]).permutation(num_shards)`` and, inside shard ``k`` (its index in `files`),
the rows in the order ``default_rng([seed, e, k]).permutation(n_k)``. Concatenating these gives
the epoch's *global stream* of N samples, identical on every rank.

*Ranks.* The stream is consumed in *rounds* of `world_size` samples: in round ``j`` rank ``r``
takes global position ``j * world_size + r``. The ranks' streams are disjoint, each rank takes
the same number of samples, and an epoch covers ``rounds_per_epoch * world_size`` samples with
``rounds_per_epoch = N // world_size``: the last ``N mod world_size`` samples of each epoch's
stream are skipped (they are different samples each epoch). Batches are `micro_batch` consecutive
samples of the rank's stream and run on across epoch boundaries.

*State.* `state_dict()` is ``{"epoch": e, "offset": o, "seed": s, "num_samples": N}``: the
position after the last batch yielded, where ``offset`` counts *global* samples of epoch ``e``
consumed by all ranks together (a multiple of world_size), the same on every rank. A loader built
with ``state=`` continues with exactly the next samples. The state is JSON-able. Because the
offset is global, a run may resume with another number of ranks: it starts at the first full
round at or after the offset (skipping fewer than world_size samples). The state's seed wins over
the `seed` argument; a state whose `num_samples` differs from the files' raises BertperfError
(other shards than those the state was saved with).

*Memory and I/O.* Shards are read one at a time with h5py (`shards.read_shard`: the whole shard,
validated against the schema and `vocab_size`); a shard is freed before the next one is read (a
batch spanning a shard boundary keeps copies of its rows only), so the memory bound per rank is
one shard's decompressed arrays (N_shard * (6*S + 8*P + 1) bytes: ~0.9 MB per 1000 instances at
S=128, P=20) plus one batch, whatever the number of shards (tested: one shard alive at a time).
Every rank reads and decompresses every shard of an epoch (it needs 1/world_size of the rows of
each), so I/O per rank is the corpus size per epoch; shards in which a rank has no row are not read.
Shapes are taken from the files' metadata at construction (all shards must share S and P; every
file must open and hold the schema's datasets with consistent shapes, `shards.check_metadata`); the
full checks (values) run when a shard is loaded, so a corrupt shard raises ShardError naming the
file then. `check_all()` adds, before training, the full check of the first shard this rank
reads (one shard per rank, not the corpus); `check_all(full=True)` checks every shard.
"""
from __future__ import annotations

import bisect
import logging
import os
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from bertperf.data.shards import SCHEMA, ShardError, check_metadata, find_shards, read_shard
from bertperf.utils.errors import BertperfError

log = logging.getLogger(__name__)


def _as_file_list(files: Sequence[str | os.PathLike] | str | os.PathLike) -> list[str]:
    return [os.fspath(f) for f in ([files] if isinstance(files, (str, os.PathLike)) else files)]


class PretrainingDataset(torch.utils.data.Dataset):
    """Masked-LM + next-sentence instances from one or more shards.

    `__getitem__(i)` returns int64 tensors: input_ids [S], segment_ids [S], input_mask [S],
    masked_lm_positions [P], masked_lm_ids [P], next_sentence_labels [] (scalar). The default
    DataLoader collate stacks them into [B, S], [B, P] and [B]. Every shard must have the same S
    and P (ShardError otherwise); empty shards are allowed and contribute nothing.
    """

    def __init__(self, files: Sequence[str | os.PathLike], vocab_size: int | None = None):
        files = _as_file_list(files)
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


def shard_shapes(path: str) -> tuple[int, int, int]:
    """(N, S, P) of a shard from its HDF5 metadata only, after `shards.check_metadata`'s checks
    (opens, all datasets present, integer dtypes, consistent shapes); ShardError naming the file."""
    return check_metadata(path)


class ShardedLoader:
    """Streaming, shuffled, per-rank, exactly resumable batches from shards (see the module docstring).

    Args:
        files: shard paths (e.g. `shards.find_shards(dir)`; a directory is expanded so); their
            order defines the shard indices.
        rank, world_size: this rank and the number of ranks (0 <= rank < world_size).
        micro_batch: B, samples per batch on this rank.
        seed: shuffling seed (the `state`'s seed wins when a state is given).
        vocab_size: when given, every loaded shard is checked for ids < vocab_size.
        state: a `state_dict()` saved earlier (default: the start of epoch 0).

    Attributes: `seq_length` (S), `max_predictions` (P), `num_samples` (N over all files),
    `rounds_per_epoch` (N // world_size), `files`. Iterating is infinite; each `iter()` restarts
    from the loader's current state (the position after the last batch yielded); use one live
    iterator at a time (they share that state). Not thread-safe; no worker processes needed.
    """

    def __init__(self, files: Sequence[str | os.PathLike] | str | os.PathLike, *, rank: int, world_size: int,
                 micro_batch: int, seed: int, vocab_size: int | None = None,
                 state: Mapping[str, Any] | None = None) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        if micro_batch < 1:
            raise ValueError(f"micro_batch must be >= 1, got {micro_batch}")
        if isinstance(files, (str, os.PathLike)) and os.path.isdir(files):
            files = find_shards(files)
        self.files = _as_file_list(files)
        if not self.files:
            raise ShardError("no shard files given to ShardedLoader; create them with `bertperf prepare`")
        self.rank, self.world_size, self.micro_batch = rank, world_size, micro_batch
        self.vocab_size = vocab_size
        sizes, first = [], None
        for path in self.files:
            n, s, p = shard_shapes(path)
            if first is None:
                first, self.seq_length, self.max_predictions = path, s, p
            elif (s, p) != (self.seq_length, self.max_predictions):
                raise ShardError(f"{path}: sequence length {s} / max predictions {p} differ from "
                                 f"{self.seq_length} / {self.max_predictions} in {first}; use shards from one "
                                 "`prepare` run")
            sizes.append(n)
        self.shard_sizes = np.asarray(sizes, dtype=np.int64)
        self._nonempty = np.flatnonzero(self.shard_sizes > 0)
        self.num_samples = int(self.shard_sizes.sum())
        if self.num_samples < world_size:
            raise BertperfError(f"{self.files[0]}: the shards hold {self.num_samples} samples, fewer than the "
                                f"{world_size} ranks; create more pre-training instances")
        self.rounds_per_epoch = self.num_samples // world_size
        self.seed = int(seed)
        self.epoch, self.offset = 0, 0
        self._checked: tuple[int, dict[str, np.ndarray]] | None = None  # the shard check_all read, kept for its first use
        if state is not None:
            self.load_state_dict(state)

    # ---- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, int]:
        """Position after the last batch yielded: {"epoch", "offset" (global samples), "seed", "num_samples"}."""
        return {"epoch": self.epoch, "offset": self.offset, "seed": self.seed, "num_samples": self.num_samples}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from `state` (see `state_dict`); BertperfError if it belongs to other shards."""
        try:
            epoch, offset = int(state["epoch"]), int(state["offset"])
            seed, n = int(state.get("seed", self.seed)), int(state.get("num_samples", self.num_samples))
        except (KeyError, TypeError, ValueError) as e:
            raise BertperfError(f"loader state {dict(state)!r} is malformed ({e}); expected the dict of "
                                "ShardedLoader.state_dict()") from None
        if n != self.num_samples:
            raise BertperfError(f"the loader state was saved for {n} samples but the {len(self.files)} shards "
                                f"(first {self.files[0]}) hold {self.num_samples}; resume with the same shards")
        if epoch < 0 or not 0 <= offset <= self.num_samples:
            raise BertperfError(f"loader state epoch {epoch} / offset {offset} is out of range for "
                                f"{self.num_samples} samples")
        if seed != self.seed:
            log.warning("resuming with the loader state's data order (seed %d), not seed %d", seed, self.seed)
        self.seed, self.epoch, self.offset = seed, epoch, offset
        first_round = -(-offset // self.world_size)
        if first_round >= self.rounds_per_epoch:
            self.epoch, self.offset = epoch + 1, 0
        else:
            self.offset = first_round * self.world_size

    def advance(self, state: Mapping[str, Any] | None = None, batches: int = 1) -> dict[str, int]:
        """The state after `batches` more batches of this rank from `state` (default: the current
        state), computed without reading anything; equals `state_dict()` after iterating them."""
        if state is None:
            state = self.state_dict()
        epoch, offset = int(state["epoch"]), int(state["offset"])
        rounds = -(-offset // self.world_size) + batches * self.micro_batch
        return {"epoch": epoch + rounds // self.rounds_per_epoch,
                "offset": rounds % self.rounds_per_epoch * self.world_size,
                "seed": int(state.get("seed", self.seed)), "num_samples": self.num_samples}

    # ---- order -------------------------------------------------------------------------------
    def shard_order(self, epoch: int) -> np.ndarray:
        """Indices (into `files`) of the non-empty shards in the order epoch `epoch` visits them."""
        return self._nonempty[np.random.default_rng([self.seed, epoch]).permutation(len(self._nonempty))]

    def row_order(self, epoch: int, shard: int) -> np.ndarray:
        """The visiting order of the rows of shard `shard` in epoch `epoch`: int64 [n_shard]."""
        return np.random.default_rng([self.seed, epoch, shard]).permutation(int(self.shard_sizes[shard]))

    def _plan(self, epoch: int, first_round: int) -> Iterator[tuple[int, int, np.ndarray]]:
        """(shard index k, global position of the shard's first row, this rank's global positions
        in it: int64 [m >= 1]) for the shards of epoch `epoch` where this rank has rows in rounds
        >= first_round, in visiting order. Reads nothing."""
        w, r = self.world_size, self.rank
        end_global = self.rounds_per_epoch * w  # positions past this are the epoch's remainder
        start = 0
        for k in self.shard_order(epoch):
            n = int(self.shard_sizes[k])
            # global positions start..start+n-1 of this shard; ours: == r (mod w), in our rounds
            lo = max(start, first_round * w)
            hi = min(start + n, end_global)
            first = lo + ((r - lo) % w)
            positions = np.arange(first, hi, w, dtype=np.int64)
            if len(positions):
                yield int(k), start, positions
            start += n

    def _segments(self) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray, int, np.ndarray]]:
        """Yield (shard arrays, this rank's rows in stream order, epoch, round index of each row) from
        the current state on, forever."""
        epoch, first_round = self.epoch, self.offset // self.world_size
        while True:
            for k, start, positions in self._plan(epoch, first_round):
                arrays = self._read(k)
                rows = self.row_order(epoch, k)[positions - start]
                yield arrays, rows, epoch, positions // self.world_size
                del arrays  # free this shard before reading the next one
            epoch, first_round = epoch + 1, 0

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        b = self.micro_batch
        pieces: list[dict[str, np.ndarray]] = []
        have = 0
        last_epoch = last_round = 0
        for arrays, rows, epoch, rounds in self._segments():
            i = 0
            while i < len(rows):
                take = min(b - have, len(rows) - i)
                sel = rows[i:i + take]
                pieces.append({name: arrays[name][sel] for name in SCHEMA})
                have += take
                last_epoch, last_round = epoch, int(rounds[i + take - 1])
                i += take
                if have == b:
                    batch = {name: torch.from_numpy(np.concatenate([p[name] for p in pieces]).astype(np.int64))
                             for name in SCHEMA}
                    pieces, have = [], 0
                    if last_round + 1 >= self.rounds_per_epoch:
                        self.epoch, self.offset = last_epoch + 1, 0
                    else:
                        self.epoch, self.offset = last_epoch, (last_round + 1) * self.world_size
                    yield batch
            del arrays, rows

    def check_all(self, full: bool = False) -> None:
        """Checks before training, cheap by default (start-up must not read the corpus on every rank).

        Every shard's metadata was checked at construction (`shards.check_metadata`: it opens,
        a truncated file does not; all datasets present, integer dtypes, consistent shapes). This
        reads and validates in full (values: ids < vocab_size, 0/1 flags, positions < S) the
        first shard this rank will train on, which catches shards made with another vocab
        before the first step. Every other shard gets the same full check when it is loaded for
        training and raises the same ShardError naming the file then. `full=True` reads and
        validates every shard now (one in memory at a time; I/O = the corpus, on every rank).
        """
        if full:
            for k in range(len(self.files)):
                self._read(k)
            return
        first = self._first_shard()
        self._checked = (first, self._read(first))  # training starts with it: not read twice

    def _read(self, k: int) -> dict[str, np.ndarray]:
        """Shard k in full, values validated (`read_shard`) and its count checked against the one
        read at start-up; the shard `check_all` kept is handed over once instead of read again."""
        if self._checked is not None and self._checked[0] == k:
            arrays, self._checked = self._checked[1], None
            return arrays
        arrays = read_shard(self.files[k], vocab_size=self.vocab_size)
        got, n = arrays["next_sentence_labels"].shape[0], int(self.shard_sizes[k])
        if got != n:
            raise ShardError(f"{self.files[k]}: holds {got} instances, but {n} when the loader started; "
                             "the file changed")
        return arrays

    def _first_shard(self) -> int:
        """Index (into `files`) of the first shard this rank reads from its current state (the state
        is always inside an epoch with a round left: `load_state_dict` moves an ended one on)."""
        return next(k for k, _, _ in self._plan(self.epoch, self.offset // self.world_size))

    def batches_per_epoch(self) -> float:
        """rounds_per_epoch / micro_batch: batches per rank per epoch (batches run across epochs)."""
        return self.rounds_per_epoch / self.micro_batch
