"""`bertperf inspect PATH [-n N] [--vocab vocab.txt]`: look inside pre-training shards.

Prints N instances of the first shard(s) decoded back to tokens, then statistics over every
shard of PATH (a shard file, or a directory of *.hdf5 / *.h5 shards).

Instance notation (one line per segment, then the NSP label):

    A: [CLS] the capital of [MASK→france] is paris→(paris) . [SEP]
    B: it has→(is) 2 million people . [SEP]
    next: random (label 1)

* ``[MASK→france]``: a masked position showing [MASK]; the token after the arrow is the true one
  the model must predict;
* ``shown→(true)``: a masked position whose input kept the true token (``paris→(paris)``) or got
  a random one (``has→(is)``), the 10% / 10% of Google's masking.
Without --vocab the ids are printed instead of the tokens (and a [MASK] shows as ``103→(2605)``).

Statistics: instances, S and P, the histogram of real lengths (sum of input_mask), masked
positions per instance, the masked fraction (masked positions / real tokens), and the NSP balance
(fraction with a random next segment). Shards are read one at a time; a corrupt or truncated
shard stops with a ShardError naming the file and what is wrong.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from bertperf.data.shards import ShardError, find_shards, read_shard

HIST_BINS = 8


@dataclass
class ShardStats:
    """Statistics over one or more shards of one S and P."""

    files: int = 0
    instances: int = 0
    seq_length: int | None = None
    max_predictions: int | None = None
    real_tokens: int = 0
    masked: int = 0
    random_next: int = 0
    length_counts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # [S + 1]
    masked_counts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # [P + 1]

    def add(self, arrays: dict[str, np.ndarray], where: str) -> None:
        """Accumulate one shard's arrays (as `read_shard` returns them)."""
        n, s = arrays["input_ids"].shape
        p = arrays["masked_lm_positions"].shape[1]
        if self.seq_length is None:
            self.seq_length, self.max_predictions = s, p
            self.length_counts = np.zeros(s + 1, dtype=np.int64)
            self.masked_counts = np.zeros(p + 1, dtype=np.int64)
        elif (s, p) != (self.seq_length, self.max_predictions):
            raise ShardError(f"{where}: sequence length {s} / max predictions {p} differ from "
                             f"{self.seq_length} / {self.max_predictions} in the shards before it")
        lengths = arrays["input_mask"].sum(axis=1, dtype=np.int64)
        masked = masked_count(arrays["masked_lm_positions"])
        self.files += 1
        self.instances += n
        self.real_tokens += int(lengths.sum())
        self.masked += int(masked.sum())
        self.random_next += int(arrays["next_sentence_labels"].sum(dtype=np.int64))
        self.length_counts += np.bincount(lengths, minlength=s + 1)
        self.masked_counts += np.bincount(masked, minlength=p + 1)

    @property
    def masked_fraction(self) -> float:
        return self.masked / self.real_tokens if self.real_tokens else 0.0

    @property
    def random_next_fraction(self) -> float:
        return self.random_next / self.instances if self.instances else 0.0

    def length_histogram(self, bins: int = HIST_BINS) -> list[tuple[int, int, int]]:
        """(low, high, count) for `bins` equal ranges of real length in [0, S] (both ends inclusive)."""
        s = self.seq_length or 0
        edges = np.linspace(0, s + 1, bins + 1).round().astype(int)
        return [(int(lo), int(hi) - 1, int(self.length_counts[lo:hi].sum()))
                for lo, hi in zip(edges[:-1], edges[1:]) if hi > lo]


def masked_count(positions: np.ndarray) -> np.ndarray:
    """Masked positions per instance: the list ends at the first 0 (position 0 is [CLS]). int64 [N]."""
    zero = positions == 0
    first_zero = np.where(zero.any(axis=1), zero.argmax(axis=1), positions.shape[1])
    return first_zero.astype(np.int64)


def shard_stats(files: Sequence[str], vocab_size: int | None = None) -> ShardStats:
    """Statistics over `files`, read one at a time (validated by `read_shard`)."""
    stats = ShardStats()
    for path in files:
        stats.add(read_shard(path, vocab_size=vocab_size), where=path)
    return stats


def format_instance(arrays: dict[str, np.ndarray], i: int, id_to_token: Sequence[str] | None = None,
                    mask_token: str = "[MASK]") -> str:
    """Instance `i` as text: the A and B segments (real tokens only) with masked positions marked,
    then the NSP label. `id_to_token` None prints ids."""
    def name(t: int) -> str:
        return id_to_token[t] if id_to_token is not None else str(t)

    length = int(arrays["input_mask"][i].sum())
    ids = arrays["input_ids"][i, :length]
    seg = arrays["segment_ids"][i, :length]
    k = int(masked_count(arrays["masked_lm_positions"][i:i + 1])[0])
    truth = dict(zip(arrays["masked_lm_positions"][i, :k].tolist(), arrays["masked_lm_ids"][i, :k].tolist()))
    words = []
    for pos, t in enumerate(ids.tolist()):
        shown = name(t)
        if pos in truth:
            true = name(truth[pos])
            shown = f"[MASK→{true}]" if shown == mask_token else f"{shown}→({true})"
        words.append(shown)
    lines = []
    for label, value in (("A", 0), ("B", 1)):
        part = [w for w, s in zip(words, seg.tolist()) if s == value]
        if part:
            lines.append(f"  {label}: {' '.join(part)}")
    nsp = int(arrays["next_sentence_labels"][i])
    lines.append(f"  next: {'random' if nsp else 'actual'} (label {nsp}); {length} real tokens, {k} masked")
    return "\n".join(lines)


def format_stats(stats: ShardStats, where: str) -> str:
    lines = [f"{where}: {stats.files} shard(s), {stats.instances} instances, S={stats.seq_length}, "
             f"P={stats.max_predictions}"]
    if stats.instances:
        mean_len = stats.real_tokens / stats.instances
        lines.append(f"real length: mean {mean_len:.1f} of {stats.seq_length}")
        peak = max(c for _, _, c in stats.length_histogram()) or 1
        for lo, hi, count in stats.length_histogram():
            bar = "#" * round(40 * count / peak)
            lines.append(f"  {lo:>5}-{hi:<5} {count:>9} {100 * count / stats.instances:5.1f}%  {bar}")
        lines.append(f"masked: {stats.masked} positions, {stats.masked / stats.instances:.2f} per instance, "
                     f"masked fraction {stats.masked_fraction:.4f} of real tokens")
        lines.append(f"next sentence: {stats.random_next} random ({100 * stats.random_next_fraction:.1f}%), "
                     f"{stats.instances - stats.random_next} actual")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bertperf inspect",
                                description="Show pre-training instances decoded (masked positions marked) and "
                                            "shard statistics.")
    p.add_argument("path", metavar="SHARD", help="a shard file or a directory of *.hdf5 / *.h5 shards")
    p.add_argument("-n", type=int, default=3, metavar="N", help="instances to show (default %(default)s; 0: none)")
    p.add_argument("--start", type=int, default=0, metavar="I", help="index of the first instance shown")
    p.add_argument("--vocab", metavar="FILE", default=None,
                   help="vocab.txt the shards were built with (without it, token ids are shown)")
    return p


def main(argv: list[str] | None = None) -> int:
    from bertperf.data.tokenize import load_vocab
    from bertperf.utils.errors import BertperfError

    args = build_parser().parse_args(argv)
    if args.n < 0 or args.start < 0:
        raise BertperfError(f"-n and --start must be >= 0, got {args.n} and {args.start}")
    id_to_token = None
    vocab_size = None
    if args.vocab:
        vocab = load_vocab(args.vocab)
        vocab_size = max(vocab.values()) + 1
        id_to_token = [""] * vocab_size
        for tok, i in vocab.items():
            id_to_token[i] = tok
    files = find_shards(args.path)
    stats = ShardStats()
    index, to_show = 0, args.n  # index: global instance index of the shard's first row
    for path in files:
        arrays = read_shard(path, vocab_size=vocab_size)
        n = arrays["input_ids"].shape[0]
        for i in range(max(0, args.start - index), n):
            if to_show == 0:
                break
            print(f"instance {index + i} ({os.path.basename(path)} row {i}):")
            print(format_instance(arrays, i, id_to_token))
            to_show -= 1
        stats.add(arrays, where=path)
        index += n
    if to_show and args.n:
        print(f"(only {args.n - to_show} instances at or after index {args.start})")
    print(format_stats(stats, args.path))
    return 0


if __name__ == "__main__":
    import sys

    from bertperf.utils.errors import run_cli

    sys.exit(run_cli(lambda: main(), prog="bertperf inspect"))
