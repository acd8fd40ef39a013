"""Per-rank memory of ZeRO 0, 1, 2 and 3 at BERT-base size on 2 ranks (fp32, AdamW).

    python bench/bench_zero_memory.py                          # BERT-base, ZeRO 0-3, 2 ranks, 2 steps
    python bench/bench_zero_memory.py --model_config tiny --stages 0 1

For each stage a fresh 2-rank job (`bertperf.train.memory`: one process per rank, gloo on
127.0.0.1) trains a couple of steps of synthetic pre-training batches and counts, on each rank,
the bytes of the tensor storages it actually holds right after the last backward (parameters,
gradients, masters and optimizer state are all resident then, the high-water mark of a step):

    params       module parameters (ZeRO-3: the rank's partition plus the small parameters
                 DeepSpeed keeps gathered, `stage3_param_persistence_threshold`)
    grads        gradients and gradient partitions
    master       fp32 master partitions (ZeRO-1/2/3 keep a separate fp32 copy even in fp32 runs)
    optim_state  AdamW's exp_avg and exp_avg_sq (and its step counters)
    buffers      ZeRO's reduce buckets as allocated (`reduce_bucket_size`, default 5e8 elements =
                 2 GB in fp32 under ZeRO-3; the CPU backs only the pages written, see peak RSS)
    peak RSS     the process's peak resident set size over the job (activations, allocator
                 slack, libraries included)

What the snapshot cannot show: transients. ZeRO-1 and ZeRO-2 hold the same tensors once backward
has finished (DeepSpeed 0.19); ZeRO-2 differs during backward, where it reduce-scatters gradients
bucket by bucket, and at initialization DeepSpeed flattens the parameters through a temporary
copy. Both show in the peak RSS column only.

The table shows the larger of the two ranks for each column (a rank's budget is set by the
larger); the JSON (`--json`, default bench/results/zero_memory.json, the bench-result format of
`bertperf.report.machine`) holds one row per stage and the per-rank figures in its notes.
A run takes a few minutes at base size (model build, DeepSpeed start-up, 2 steps, per stage).
"""
from __future__ import annotations

import argparse
import os
import sys

from bertperf.report.machine import write_bench_json
from bertperf.train.memory import CATEGORIES, JobSpec, launch_local

MIB = 2**20
COLUMNS = [f"{c}_mib" for c in CATEGORIES] + ["tensors_total_mib", "peak_rss_mib"]


def stage_row(stage: int, reports: list[dict]) -> tuple[dict, list[str]]:
    """One table row (max over ranks, MiB) and one note line per rank."""
    per_rank = []
    for r in sorted(reports, key=lambda r: r["rank"]):
        snap = r["after_backward"]
        vals = {f"{c}_mib": snap["bytes"][c] / MIB for c in CATEGORIES}
        vals["tensors_total_mib"] = snap["total"] / MIB
        vals["peak_rss_mib"] = r["peak_rss_bytes"] / MIB
        per_rank.append((r["rank"], vals))
    row = {"zero_stage": stage, "ranks": len(reports), "params_m": round(reports[0]["n_params"] / 1e6, 2)}
    row.update({k: round(max(v[k] for _, v in per_rank), 1) for k in COLUMNS})
    notes = [f"ZeRO-{stage} rank {rank}: " + ", ".join(f"{k} {v:.1f}" for k, v in vals.items())
             for rank, vals in per_rank]
    return row, notes


def print_table(rows: list[dict], spec: JobSpec) -> None:
    print(f"per-rank tensor memory after backward, MiB (max over {rows[0]['ranks']} ranks); "
          f"{spec.model_config} ({rows[0]['params_m']}M params), fp32, AdamW, micro batch {spec.micro_batch} "
          f"x seq {spec.seq_length}")
    head = ["ZeRO", "params", "grads", "master", "optim", "buffers*", "tensors", "peak RSS"]
    print("  ".join(f"{h:>9}" for h in head))
    for r in rows:
        cells = [str(r["zero_stage"])] + [f"{r[k]:.1f}" for k in COLUMNS]
        print("  ".join(f"{c:>9}" for c in cells))
    print("* ZeRO reduce buckets as allocated; only the pages written are resident (see peak RSS).")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_config", default="base", help="preset or BERT config JSON (default %(default)s)")
    p.add_argument("--stages", type=int, nargs="+", default=[0, 1, 2, 3], choices=(0, 1, 2, 3))
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--micro_batch", type=int, default=2)
    p.add_argument("--seq_length", type=int, default=128)
    p.add_argument("--steps", type=int, default=2, help="optimizer steps per job (>= 2: the state exists "
                   "after the first)")
    p.add_argument("--json", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                  "zero_memory.json"))
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rows, notes = [], []
    spec = None
    for stage in args.stages:
        spec = JobSpec(model_config=args.model_config, zero_stage=stage, micro_batch=args.micro_batch,
                       seq_length=args.seq_length, steps=args.steps)
        print(f"ZeRO-{stage}: {args.ranks} ranks, {args.steps} steps ...", file=sys.stderr, flush=True)
        row, rank_notes = stage_row(stage, launch_local(spec, args.ranks))
        rows.append(row)
        notes += rank_notes
    assert spec is not None
    print_table(rows, spec)
    notes = [f"{args.model_config}, fp32, AdamW (client optimizer), {args.ranks} ranks (gloo), micro batch "
             f"{args.micro_batch} x seq {args.seq_length}, measured after the backward of step {args.steps}; "
             "each column is the max over ranks; buffers = ZeRO reduce buckets as allocated"] + notes
    write_bench_json(args.json, "zero_memory", f"per-rank memory by ZeRO stage ({args.model_config}, "
                     f"{args.ranks} ranks, fp32 AdamW)", rows, notes)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    from bertperf.utils.errors import run_cli

    sys.exit(run_cli(lambda: main(), prog="bench_zero_memory.py"))
