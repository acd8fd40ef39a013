"""Bench the streaming shard loader (`bertperf.data.loader.ShardedLoader`) against what training eats.

Measures, in one run:
  loader 1 rank     sustained samples/s of one rank iterating micro batches (shard loads included,
                    several shards, across an epoch boundary)
  loader 2 ranks    samples/s of each of 2 ranks iterating at the same time in 2 processes
                    (every rank decompresses every shard: see the loader's docstring)
  BERT-base step    sequences/s of one eager fp32 training step (forward, backward, AdamW) of
                    bertperf's BertForPreTraining base at batch 8, seq 128, on batches from the loader
and prints loader samples/s per rank / model seq/s of the whole machine (the target is >= 20x;
conservative for 2 ranks, where each rank trains at about half that rate), plus each loader
process' peak RSS growth (one shard's arrays plus h5py read buffers and allocator slack; flat in the
number of shards).

Shards: synthetic S=128, P=20 shards with realistic content (lengths mostly near S, ~15% masked,
random ids) written to a temporary directory, or real ones with --data_dir.

Run: `python bench/bench_loader.py [--shards 6] [--per_shard 2000] [--samples 20000] [--model_steps 2]`.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import h5py  # noqa: F401  (imported before the RSS baseline is taken)
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bertperf.data.loader import ShardedLoader  # noqa: E402
from bertperf.data.shards import find_shards, write_shard  # noqa: E402

S, P, VOCAB = 128, 20, 30522


def synthetic_shard(n: int, seed: int) -> dict[str, np.ndarray]:
    """n instances shaped like `bertperf prepare` output: real lengths mostly S (10% short),
    min(P, round(0.15 * len)) masked positions, NSP 50/50."""
    r = np.random.default_rng(seed)
    lengths = np.where(r.random(n) < 0.1, r.integers(8, S + 1, n), S)
    cols = np.arange(S)[None, :]
    mask = (cols < lengths[:, None]).astype(np.int8)
    ids = r.integers(1000, VOCAB, (n, S)) * mask
    ids[:, 0] = 101
    ids[np.arange(n), lengths - 1] = 102
    seg = ((cols >= (lengths // 2)[:, None]) & (mask > 0)).astype(np.int8)
    pos = np.zeros((n, P), np.int32)
    mid = np.zeros((n, P), np.int32)
    for i in range(n):
        k = min(P, max(1, round(0.15 * lengths[i])))
        chosen = np.sort(r.choice(np.arange(1, lengths[i] - 1), k, replace=False))
        pos[i, :k] = chosen
        mid[i, :k] = ids[i, chosen]
        ids[i, chosen] = 103
    return {"input_ids": ids, "input_mask": mask, "segment_ids": seg, "masked_lm_positions": pos,
            "masked_lm_ids": mid, "next_sentence_labels": r.integers(0, 2, n)}


def rss_mb() -> float:
    """Current resident set size in MB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def run_loader(files: list[str], rank: int, world: int, batch: int, samples: int, out=None) -> tuple[float, float]:
    """Iterate `samples` samples on one rank; return (samples/s, peak RSS growth MB over the RSS
    before the loader was built, sampled every 64 batches)."""
    before = peak = rss_mb()
    loader = ShardedLoader(files, rank=rank, world_size=world, micro_batch=batch, seed=1234, vocab_size=VOCAB)
    it = iter(loader)
    next(it)  # first shard load is part of startup, not of the sustained rate
    n_batches = max(1, samples // batch)
    start = time.perf_counter()
    for i in range(n_batches):
        next(it)
        if i % 64 == 0:
            peak = max(peak, rss_mb())
    rate = n_batches * batch / (time.perf_counter() - start)
    result = (rate, max(peak, rss_mb()) - before)
    if out is not None:
        out.put((rank, result))
    return result


def run_ranks(files: list[str], world: int, batch: int, samples: int) -> list[tuple[float, float]]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=run_loader, args=(files, r, world, batch, samples, q)) for r in range(world)]
    for p in procs:
        p.start()
    results = dict(q.get() for _ in procs)
    for p in procs:
        p.join()
    return [results[r] for r in range(world)]


def model_rate(files: list[str], steps: int, batch: int = 8) -> float:
    """Sequences/s of eager fp32 BERT-base training steps at batch 8 (after one warm-up step)."""
    import torch

    from bertperf.model import BertForPreTraining
    from bertperf.model.config import BertConfig

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    model = BertForPreTraining(BertConfig.preset("base")).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    it = iter(ShardedLoader(files, rank=0, world_size=1, micro_batch=batch, seed=0))

    def step() -> None:
        opt.zero_grad()
        model(**next(it)).loss.backward()
        opt.step()

    step()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return batch / min(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data_dir", default=None, help="real shards (default: synthetic S=128 shards in a temp dir)")
    p.add_argument("--shards", type=int, default=6, help="synthetic shards (default %(default)s)")
    p.add_argument("--per_shard", type=int, default=2000, help="instances per synthetic shard (default %(default)s)")
    p.add_argument("--samples", type=int, default=20000, help="samples timed per rank (default %(default)s)")
    p.add_argument("--micro_batch", type=int, default=8)
    p.add_argument("--model_steps", type=int, default=2, help="timed BERT-base steps (0: skip the model)")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-loader-") as tmp:
        if args.data_dir:
            files = find_shards(args.data_dir)
        else:
            files = []
            for k in range(args.shards):
                files.append(os.path.join(tmp, f"shard_{k:05d}.hdf5"))
                write_shard(files[-1], synthetic_shard(args.per_shard, k))
        size_mb = sum(os.path.getsize(f) for f in files) / 2**20
        n = sum(ShardedLoader(files, rank=0, world_size=1, micro_batch=1, seed=0).shard_sizes)
        per_shard_mb = n / len(files) * (6 * S + 8 * P + 1) / 2**20
        print(f"shards: {len(files)} files, {n} instances, {size_mb:.1f} MB on disk, {per_shard_mb:.1f} MB in memory "
              f"per shard; micro batch {args.micro_batch}, {args.samples} samples timed per rank")
        one = run_ranks(files, 1, args.micro_batch, args.samples)
        two = run_ranks(files, 2, args.micro_batch, args.samples)
        seq_s = model_rate(files, args.model_steps) if args.model_steps > 0 else float("nan")

    print(f"{'measure':<34} {'samples/s':>12} {'RSS growth MB':>14} {'x model':>9}")
    rows = [("loader, 1 rank", one[0])] + [(f"loader, 2 ranks: rank {r}", two[r]) for r in range(2)]
    for name, (rate, rss) in rows:
        print(f"{name:<34} {rate:>12.0f} {rss:>14.1f} {rate / seq_s:>9.0f}")
    print(f"{'BERT-base train step (b 8, s 128)':<34} {seq_s:>12.2f} {'':>14} {1:>9}")
    if args.model_steps <= 0:
        return 0
    worst = min(r for _, (r, _) in rows) / seq_s
    verdict = "OK" if worst >= 20 else "BELOW TARGET"
    print(f"loader / model: {worst:.0f}x at the slowest rank (target >= 20x): {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
