"""End-to-end pre-training throughput: bertperf against Hugging Face transformers, same run.

    python bench/bench_e2e.py                       # the full matrix (tens of minutes at base)
    python bench/bench_e2e.py --models tiny mini --modes eager --precisions fp32 --rounds 3
    make bench                                      # the full matrix, JSON in bench/results/

Contenders, each a full training step (zero_grad, forward, MLM + NSP loss, backward, AdamW step)
on the same batch with the same thread count; both use torch's fused AdamW (`fused=True`, the
optimizer transformers' Trainer picks by default on recent torch):
- `bertperf`: `bertperf.model.BertForPreTraining` (sparse MLM head: only the masked positions
  reach the decoder; fused QKV; the fused kernels with `--kernel_backend`, default cpu). bf16 is
  bertperf's own path, as DeepSpeed's bf16 mode runs it: bf16 weights and activations, fp32 master
  weights and AdamW state, gradients copied to fp32 before the step.
- `hf`: `transformers.BertForPreTraining` (dense MLM head over every position, labels -100 where
  not masked, its default attention), torch AdamW; bf16 = `torch.autocast("cpu", bfloat16)` over
  fp32 weights (HF's documented mixed-precision route on CPU).
Each in eager mode and under `torch.compile` of the model (compile time and the first steps are
warm-up, excluded and reported separately). Dropout 0.1 as in pre-training.

Timing: after warm-up the contenders run in alternating rounds (A B C D, A B C D, ...) of
`--steps` steps each, so drift in the machine's load hits all of them; each round gives one
sequences/s figure and the table shows the median with the min and max over rounds.

FLOPs: `bertperf.report.flops` (matmul FLOPs only, 3x forward, MLM head at the masked positions
only). The same model FLOPs are credited to both contenders: HF's dense head does ~7x more MLM work
that this count does not reward. MFU = achieved FLOP/s / the peak GEMM rate measured in this run
(square fp32 and bf16 matmuls of `--gemm` size at the same thread count).

Writes a bench result JSON (`--json`, default bench/results/e2e.json) for `bertperf report`.
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch

from bertperf.model import BertConfig
from bertperf.model.heads import BertForPreTraining
from bertperf.report.flops import pretrain_flops_per_sequence
from bertperf.report.machine import write_bench_json

MODELS = ("tiny", "mini", "small", "base")
MASKED = {128: 20, 512: 80}


def make_batch(vocab: int, b: int, s: int, masked: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Full-length sequences, two segments, `masked` MLM positions each (never [CLS]), NSP labels."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, vocab, (b, s), generator=gen)
    seg = torch.zeros(b, s, dtype=torch.long)
    seg[:, s // 2:] = 1
    mask = torch.ones(b, s, dtype=torch.long)
    pos = torch.stack([torch.randperm(s - 1, generator=gen)[:masked].sort().values + 1 for _ in range(b)])
    labels = torch.randint(1000, vocab, pos.shape, generator=gen)
    nsp = torch.randint(0, 2, (b,), generator=gen)
    return {"input_ids": ids, "segment_ids": seg, "input_mask": mask, "masked_lm_positions": pos,
            "masked_lm_ids": labels, "next_sentence_labels": nsp}


def hf_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same batch in HF's form: dense MLM labels with -100 where nothing is predicted."""
    labels = torch.full_like(batch["input_ids"], -100)
    labels.scatter_(1, batch["masked_lm_positions"], batch["masked_lm_ids"])
    return {"input_ids": batch["input_ids"], "token_type_ids": batch["segment_ids"],
            "attention_mask": batch["input_mask"], "labels": labels,
            "next_sentence_label": batch["next_sentence_labels"]}


class Bf16MasterAdamW:
    """bf16 weights in the model, fp32 masters and AdamW state: what DeepSpeed's bf16 mode does."""

    def __init__(self, model: torch.nn.Module, lr: float):
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.masters = [p.detach().float().clone().requires_grad_(True) for p in self.params]
        self.opt = torch.optim.AdamW(self.masters, lr=lr, fused=True)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        for p, m in zip(self.params, self.masters):
            m.grad = p.grad.float() if p.grad is not None else None
        self.opt.step()
        with torch.no_grad():
            for p, m in zip(self.params, self.masters):
                p.copy_(m)


@dataclass
class Contender:
    name: str  # "bertperf" | "hf"
    mode: str  # "eager" | "compile"
    precision: str  # "fp32" | "bf16"
    step: Callable[[], None]
    warmup_s: float = 0.0

    @property
    def label(self) -> str:
        return f"{self.name} {self.mode} {self.precision}"


def build_bertperf(cfg: BertConfig, batch, mode: str, precision: str, lr: float) -> Callable[[], None]:
    model = BertForPreTraining(cfg).train()
    if precision == "bf16":
        model = model.to(torch.bfloat16)
        opt = Bf16MasterAdamW(model, lr)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=lr, fused=True)
    fwd = torch.compile(model) if mode == "compile" else model

    def step() -> None:
        opt.zero_grad()
        out = fwd(**batch)
        out.loss.backward()
        opt.step()
    return step


def build_hf(cfg: BertConfig, batch, mode: str, precision: str, lr: float) -> Callable[[], None]:
    import transformers

    hf_cfg = transformers.BertConfig(**cfg.to_hf_dict())
    model = transformers.BertForPreTraining(hf_cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, fused=True)
    fwd = torch.compile(model) if mode == "compile" else model
    inputs = hf_inputs(batch)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = fwd(**inputs)
        out.loss.backward()
        opt.step()
    return step


def peak_gemm(n: int, dtype: torch.dtype, seconds: float = 1.0) -> float:
    """Best FLOP/s of an n x n x n matmul at the current thread count."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    c = torch.empty(n, n, dtype=dtype)
    for _ in range(3):
        torch.matmul(a, b, out=c)
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        torch.matmul(a, b, out=c)
        best = max(best, 2 * n**3 / (time.perf_counter() - t))
    return best


def time_steps(step: Callable[[], None], steps: int) -> float:
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return time.perf_counter() - t


def run_case(model: str, seq: int, args: argparse.Namespace, peaks: dict[str, float]) -> list[dict]:
    masked = MASKED.get(seq, round(0.15 * seq))
    cfg = BertConfig.preset(model, kernel_backend=args.kernel_backend, max_position_embeddings=max(512, seq))
    batch = make_batch(cfg.vocab_size, args.batch, seq, masked)
    builders = {"bertperf": build_bertperf, "hf": build_hf}
    torch._dynamo.reset()  # a fresh cache per case (the previous case's graphs are of other shapes)
    contenders: list[Contender] = []
    for name in args.frameworks:
        for mode in args.modes:
            for precision in args.precisions:
                torch.manual_seed(0)
                # no torch._dynamo.reset() here: it would drop the graphs compiled for the contenders
                # built before, which then recompile inside the timed rounds
                c = Contender(name, mode, precision, builders[name](cfg, batch, mode, precision, 1e-4))
                t = time.perf_counter()
                for _ in range(args.warmup):
                    c.step()
                c.warmup_s = time.perf_counter() - t
                print(f"  warm-up {model} s{seq} {c.label}: {c.warmup_s:.1f} s", file=sys.stderr, flush=True)
                contenders.append(c)
    rates: dict[str, list[float]] = {c.label: [] for c in contenders}
    for _ in range(args.rounds):
        for c in contenders:
            rates[c.label].append(args.batch * args.steps / time_steps(c.step, args.steps))
    fps = pretrain_flops_per_sequence(cfg, seq, masked)
    best_hf = {p: max((statistics.median(rates[c.label]) for c in contenders if c.name == "hf" and c.precision == p),
                      default=None) for p in args.precisions}
    hf_fp32_eager = next((statistics.median(rates[c.label]) for c in contenders
                          if (c.name, c.mode, c.precision) == ("hf", "eager", "fp32")), None)
    rows = []
    for c in contenders:
        med = statistics.median(rates[c.label])
        tflops = fps * med / 1e12
        ref = best_hf.get(c.precision)
        rows.append({"model": model, "seq": seq, "batch": args.batch, "threads": torch.get_num_threads(),
                     "contender": c.name, "mode": c.mode, "precision": c.precision,
                     "seq_per_s": round(med, 3), "seq_per_s_min": round(min(rates[c.label]), 3),
                     "seq_per_s_max": round(max(rates[c.label]), 3),
                     "x_best_hf_same_precision": round(med / ref, 3) if ref else None,
                     "x_hf_fp32_eager": round(med / hf_fp32_eager, 3) if hf_fp32_eager else None,
                     "tflops": round(tflops, 4), "mfu": round(tflops * 1e12 / peaks[c.precision], 4),
                     "warmup_s": round(c.warmup_s, 1)})
    del contenders
    gc.collect()
    return rows


def profile_case(model: str, seq: int, args: argparse.Namespace) -> list[dict]:
    """Self CPU time per torch op over `--steps` steps of one contender (after warm-up)."""
    from torch.profiler import ProfilerActivity, profile

    name, mode, precision = args.profile
    masked = MASKED.get(seq, round(0.15 * seq))
    cfg = BertConfig.preset(model, kernel_backend=args.kernel_backend, max_position_embeddings=max(512, seq))
    batch = make_batch(cfg.vocab_size, args.batch, seq, masked)
    torch.manual_seed(0)
    step = {"bertperf": build_bertperf, "hf": build_hf}[name](cfg, batch, mode, precision, 1e-4)
    for _ in range(args.warmup):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    rows = [{"op": e.key, "calls": e.count, "self_ms": round(e.self_cpu_time_total / 1e3 / args.steps, 3),
             "percent": round(100 * e.self_cpu_time_total / total, 2)}
            for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:args.profile_top]]
    return rows


def format_rows(rows: list[dict], peaks: dict[str, float]) -> str:
    lines = ["| model | seq | contender | mode | prec | seq/s median [min, max] | x best HF (same prec) "
             "| x HF fp32 eager | TFLOP/s | MFU |", "|" + "---|" * 10]
    for r in rows:
        lines.append(f"| {r['model']} | {r['seq']} | {r['contender']} | {r['mode']} | {r['precision']} "
                     f"| {r['seq_per_s']:.2f} [{r['seq_per_s_min']:.2f}, {r['seq_per_s_max']:.2f}] "
                     f"| {r['x_best_hf_same_precision'] or '-'} | {r['x_hf_fp32_eager'] or '-'} "
                     f"| {r['tflops']:.3f} | {100 * r['mfu']:.1f}% |")
    lines.append("")
    lines.append("peak GEMM measured in this run: " + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in peaks.items())
                 + f"; {torch.get_num_threads()} thread(s); load average {os.getloadavg()[0]:.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS) + ["large"])
    p.add_argument("--seqs", type=int, nargs="+", default=[128], help="sequence lengths for every model")
    p.add_argument("--base512", action=argparse.BooleanOptionalAction, default=True,
                   help="also base at seq 512 (default on)")
    p.add_argument("--frameworks", nargs="+", default=["bertperf", "hf"], choices=["bertperf", "hf"])
    p.add_argument("--modes", nargs="+", default=["eager", "compile"], choices=["eager", "compile"])
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=2, help="steps per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2, help="untimed steps (compilation happens here)")
    p.add_argument("--kernel_backend", default="cpu", help="bertperf's fused-kernel backend")
    p.add_argument("--gemm", type=int, default=2048, help="size of the peak-GEMM probe")
    p.add_argument("--profile", nargs=3, metavar=("FRAMEWORK", "MODE", "PRECISION"), default=None,
                   help="instead of the matrix: per-op self CPU time of one contender (torch.profiler) for "
                        "each model, e.g. --profile bertperf eager fp32; JSON kind 'profile'")
    p.add_argument("--profile_top", type=int, default=25, help="ops kept in the profile")
    p.add_argument("--json", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "e2e.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.profile:
        rows = []
        for model in args.models:
            for seq in args.seqs:
                part = profile_case(model, seq, args)
                rows += [{"model": model, "seq": seq, **r} for r in part]
                print(f"\n{model} s{seq} {' '.join(args.profile)}: self CPU ms per step")
                for r in part:
                    print(f"  {r['self_ms']:10.2f} ms {r['percent']:6.2f}%  {r['calls']:5d}x  {r['op']}")
        path = args.json if args.json != p.get_default("json") else args.json.replace("e2e.json", "profile.json")
        write_bench_json(path, "profile", f"Where a training step's time goes: {' '.join(args.profile)}", rows,
                         [f"torch.profiler self CPU time per step, {args.steps} steps after {args.warmup} warm-up, "
                          f"batch {args.batch}, {args.threads} threads"])
        print(f"\nwrote {path}")
        return 0
    peaks = {"fp32": peak_gemm(args.gemm, torch.float32), "bf16": peak_gemm(args.gemm, torch.bfloat16)}
    cases = [(m, s) for m in args.models for s in args.seqs]
    if args.base512 and "base" in args.models and 512 not in args.seqs:
        cases.append(("base", 512))
    rows: list[dict] = []
    for model, seq in cases:
        rows += run_case(model, seq, args, peaks)
        print(format_rows(rows[-len(args.frameworks) * len(args.modes) * len(args.precisions):], peaks),
              file=sys.stderr, flush=True)
    table = format_rows(rows, peaks)
    print(table)
    notes = [f"peak GEMM fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s "
             f"({args.gemm}^3 matmul, {args.threads} threads, measured in this run)",
             "FLOPs: matmul only, 3x forward, MLM head at the masked positions (bertperf.report.flops), the same "
             "for both contenders", f"batch {args.batch}; {args.rounds} alternating rounds of {args.steps} steps; "
             f"{args.warmup} warm-up steps excluded (compilation included there)"]
    write_bench_json(args.json, "e2e", "Pre-training throughput: bertperf vs Hugging Face", rows, notes)
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
