"""Data-parallel scaling of pre-training from 1 to 2 DeepSpeed ranks, on the bundled Wikipedia sample.

    python bench/bench_scaling.py                     # tiny BERT, 80 steps per run, 1 thread per rank
    python bench/bench_scaling.py --model mini --steps 40
    make bench                                        # runs it, then `bertperf report` shows the scaling

Each run is a real `deepspeed --num_gpus N bertperf/pretrain.py` job (configs/ds-demo.json: ZeRO-2,
fp32, 32 sequences per rank per step, so the global batch grows with the ranks: weak scaling) on
shards prepared from `.data/enwiki-sample.xml.bz2` (prepared once into `<out>/shards`). Every rank
gets one thread (`OMP_NUM_THREADS=1`), so N ranks use N cores and the ideal speedup is N.
The run directories (`<out>/ranks1`, `<out>/ranks2`, with summary.json and metrics.csv) are what
`bertperf report` reads: it groups runs of the same model, precision, ZeRO stage and sequence
length and prints speedup and efficiency (speedup / ideal). The first `--log_every` steps are
start-up and are not in summary.json's seq/s. The table is also written as a bench result
(`--json`, default bench/results/scaling.json), so the committed results carry it without the runs.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys

from bertperf.report.machine import write_bench_json
from bertperf.train.engine import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def prepare_shards(shards: str, vocab: str, sample: str) -> None:
    """The demo's shards (seq 128, 20 predictions, dupe factor 3), made once."""
    if os.path.isdir(shards) and any(n.endswith(".hdf5") for n in os.listdir(shards)):
        return
    subprocess.run([sys.executable, "-m", "bertperf.data.prepare", "--input", sample, "--vocab", vocab,
                    "--output_dir", shards, "--max_seq_length", "128", "--max_predictions_per_seq", "20",
                    "--dupe_factor", "3", "--quiet"], check=True, cwd=ROOT)


def pretrain(ranks: int, args: argparse.Namespace, shards: str, run_dir: str) -> dict:
    """One `deepspeed --num_gpus ranks` pre-training run; returns its summary.json."""
    shutil.rmtree(run_dir, ignore_errors=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    launcher = os.path.join(os.path.dirname(sys.executable), "deepspeed")
    cmd = [launcher, "--num_gpus", str(ranks), "--master_port", str(free_port()),
           os.path.join(ROOT, "bertperf", "pretrain.py"), "--deepspeed_config", args.deepspeed_config,
           "--model_config", args.model, "--vocab", args.vocab, "--data_dir", shards,
           "--output_dir", run_dir, "--max_steps", str(args.steps), "--log_every", str(args.log_every)]
    print(f"== {ranks} rank(s): {' '.join(cmd[1:4])} ... --max_steps {args.steps}", flush=True)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        print(proc.stdout[-4000:], file=sys.stderr)
        raise SystemExit(f"bench_scaling: the {ranks}-rank run failed (exit {proc.returncode}); its log is above")
    with open(os.path.join(run_dir, "summary.json")) as f:
        return json.load(f)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tiny", help="model preset")
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--log_every", type=int, default=10)
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    p.add_argument("--deepspeed_config", default=os.path.join(ROOT, "configs", "ds-demo.json"))
    p.add_argument("--vocab", default=os.path.join(ROOT, ".data", "minilm", "vocab.txt"))
    p.add_argument("--sample", default=os.path.join(ROOT, ".data", "enwiki-sample.xml.bz2"))
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "runs", "scaling"))
    p.add_argument("--json", default=os.path.join(ROOT, "bench", "results", "scaling.json"))
    args = p.parse_args(argv)
    shards = os.path.join(args.out, "shards")
    prepare_shards(shards, args.vocab, args.sample)
    results = {n: pretrain(n, args, shards, os.path.join(args.out, f"ranks{n}")) for n in args.ranks}
    first = min(results)
    rows = []
    for n, s in sorted(results.items()):
        speedup = s["seq_per_s"] / results[first]["seq_per_s"]
        rows.append({"model": args.model, "seq": 128, "ranks": n, "threads_per_rank": s["threads_per_rank"],
                     "seq_per_s": round(s["seq_per_s"], 2), "speedup": round(speedup, 3),
                     "efficiency": round(speedup / (n / first), 3)})
    print("\n| ranks | threads/rank | seq/s | speedup | efficiency |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['ranks']} | {r['threads_per_rank']} | {r['seq_per_s']:.1f} | {r['speedup']:.2f}x | "
              f"{100 * r['efficiency']:.0f}% |")
    note = (f"{args.model}, seq 128, {args.steps} steps, ZeRO-2 fp32, 32 sequences per rank per step, one thread "
            f"per rank; load average {os.getloadavg()[0]:.2f}")
    print(f"\n{note}; run dirs under {args.out} (`bertperf report` them)")
    if args.json:
        write_bench_json(args.json, "scaling", "Data-parallel scaling of pre-training, 1 to 2 ranks", rows, [note])
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
