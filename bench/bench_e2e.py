"""End-to-end pre-training throughput: bertperf against Hugging Face transformers, same run.

    python bench/bench_e2e.py                       # the full matrix (~16 min at 2 threads, see Budget)
    python bench/bench_e2e.py --models tiny mini --modes eager --precisions fp32 --rounds 3
    python bench/bench_e2e.py --profile bertperf eager fp32 --models tiny mini base
    make bench                                      # the full matrix, JSON in bench/results/

Contenders, each a full training step (zero_grad, forward, MLM + NSP loss, backward, AdamW step)
on the same batch with the same thread count; both use torch's fused AdamW (`fused=True`, the
optimizer transformers' Trainer picks by default on recent torch):
- `bertperf`: `bertperf.model.BertForPreTraining` (sparse MLM head: only the masked positions
  reach the decoder; fused QKV; the model's defaults `--kernel_backend auto` (the C++ kernels
  on CPU) and `--attention_impl auto` (the fused attention with them, else SDPA)). bf16 is
  bertperf's own path, as DeepSpeed's bf16 mode runs it: bf16 weights and activations, fp32
  master weights and AdamW state, gradients copied to fp32 before the step and the masters back
  after it (`Bf16MasterAdamW`: one foreach copy each way). On a CPU without AMX its projections
  are fp32 GEMMs over the bf16 values (the same products and fp32 sums as a bf16 GEMM, at the
  fp32 rate: `bertperf.ops.linear`); the attention GEMMs stay bf16.
- `bertperf-unpad` (not in the default matrix): bertperf with `config.unpad` (pad tokens skipped
  outside attention); only meaningful with padded batches (`--min_len`), e.g.
  `--frameworks bertperf bertperf-unpad hf --min_len 32 --modes eager --no-base512`.
- `hf`: `transformers.BertForPreTraining` (dense MLM head over every position, labels -100 where
  not masked, its default attention), torch AdamW; bf16 = `torch.autocast("cpu", bfloat16)` over
  fp32 weights (HF's documented mixed-precision route on CPU).
Each in eager mode and under `torch.compile` of the model (compile time and the first steps are
warm-up, excluded and reported separately). Dropout 0.1 as in pre-training.

Timing: after warm-up the contenders run in alternating rounds (A B C D, A B C D, ...) of
`--steps` steps each, so drift in the machine's load hits all of them; each round gives one
sequences/s figure and the table shows the median with the min and max over rounds.
Each mode runs in its own fresh process (`--modes eager compile`: one child process per mode, its
contenders alternating as above; the parent merges the rows and computes the ratio columns over
all of a case's contenders, so "best HF" is the best of HF eager and compiled): compiled
contenders in the same process slowed the eager ones down (BERT-base eager fp32 3.71 seq/s in
the full matrix against 3.99-4.04 in an eager-only process; HF eager 2.67 against 2.78).

Defaults (the full matrix: tiny, mini, small, base at seq 128 and base at seq 512, bertperf and
HF, eager and compiled, fp32 and bf16 = 40 contenders):
- batch 8 at seq 128; base at seq 512 runs batch 2 (the same 1024 tokens per step);
- steps per round: tiny 8, mini 4, small 2, base 1 (base at 512: 1), 5 rounds (3 gave base
  medians that moved by 3-8% between runs, one slow round being a third of the sample);
- warm-up: 2 steps eager, 4 compiled (the first compiles; the others catch the recompilations
  of the backward and of the optimizer step, which otherwise land in the timed rounds).
Budget at 2 threads on a quiet machine: the full matrix took 13 minutes with 3 rounds on 2026-11-24 (the base
cases most of it, compilation ~30-60 s per compiled contender at base). `--models`, `--modes`,
`--precisions` and `--no-base512` cut it down.

FLOPs: `bertperf.report.flops` (matmul FLOPs only, 3x forward, MLM head at the masked positions
only). The same model FLOPs are credited to both contenders: HF's dense head does 6.4x more MLM
work (128 / 20 positions) that this count does not reward: HF executes 4.1x the model count at
tiny, 2.4x at mini, 1.9x at small, 1.2x at base (seq 128), and 4.8x, 2.8x, 2.2x and 1.3x what
bertperf executes. MFU = achieved FLOP/s / the peak GEMM rate measured in
the contender's process (square fp32 and bf16 matmuls of `--gemm` size at the same thread count)
of the precision its GEMMs run in (bertperf's eager bf16 on a CPU without AMX: fp32, see
`bertperf.ops.linear`; the row's `gemm_precision`);
"MFU own FLOPs" credits each contender with the FLOPs it executes (HF: the head at every position; bertperf: its
last layer at [CLS] and the masked rows only, `BertConfig.sparse_last_layer`, which the model count
does not credit: there it shows as speed).

Writes a bench result JSON (`--json`, default bench/results/e2e.json) for `bertperf report`.
`--profile FRAMEWORK MODE PRECISION` runs one contender per model under torch.profiler instead and
writes the top ops (self CPU ms per step, share, calls) as a bench JSON of kind "profile"
(default bench/results/profile-FRAMEWORK-MODE-PRECISION.json, which `bertperf report
bench/results` plots next to e2e.json).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

import torch

from bertperf.model import BertConfig
from bertperf.model.config import ATTENTION_IMPLS
from bertperf.model.heads import BertForPreTraining
from bertperf.report.flops import pretrain_flops_per_sequence
from bertperf.report.machine import write_bench_json
from bertperf.utils.errors import BertperfError, run_cli
from bertperf.utils.malloc import describe

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import add_malloc_argument, device, use_malloc  # noqa: E402

MODELS = ("tiny", "mini", "small", "base")
MASKED = {128: 20, 512: 80}
# steps per timed round (one round of a contender lasts about 1 s at tiny and 3-8 s at base)
STEPS = {"tiny": 8, "mini": 4, "small": 2, "base": 1, "large": 1}
BATCH_512 = 2  # sequences per step at seq 512: the same 1024 tokens as 8 x 128


def case_batch(args: argparse.Namespace, seq: int) -> int:
    """Sequences per step: --batch at seq <= 128, else the same tokens (--batch * 128 / seq, at
    least 1) unless --batch_long is given."""
    if seq <= 128:
        return args.batch
    return args.batch_long or max(1, args.batch * 128 // seq)


def case_steps(args: argparse.Namespace, model: str, seq: int) -> int:
    """Steps per timed round: --steps, else STEPS[model] (scaled down for long sequences)."""
    if args.steps:
        return args.steps
    return max(1, STEPS[model] * 128 // max(seq, 128))


def bench_config(model: str, seq: int, args: argparse.Namespace) -> BertConfig:
    """The preset with the bench's kernel backend and attention (HF reads the same shape)."""
    return BertConfig.preset(model, kernel_backend=args.kernel_backend, attention_impl=args.attention_impl,
                             max_position_embeddings=max(512, seq))


def make_batch(vocab: int, b: int, s: int, masked: int, seed: int = 0,
               min_len: int | None = None) -> dict[str, torch.Tensor]:
    """Two segments, `masked` MLM positions each (never [CLS]), NSP labels. Full-length sequences,
    or with `min_len` lengths uniform in [min_len, s] (right padding, id 0; a sequence of length n
    predicts min(masked, n - 1) positions, the list zero-padded)."""
    gen = torch.Generator().manual_seed(seed)
    lengths = [s] * b if min_len is None else torch.randint(max(2, min_len), s + 1, (b,), generator=gen).tolist()
    ids = torch.randint(1000, vocab, (b, s), generator=gen)
    seg = torch.zeros(b, s, dtype=torch.long)
    mask = torch.zeros(b, s, dtype=torch.long)
    pos = torch.zeros(b, masked, dtype=torch.long)
    for i, n in enumerate(lengths):
        seg[i, n // 2:n] = 1
        mask[i, :n] = 1
        ids[i, n:] = 0
        k = min(masked, n - 1)
        pos[i, :k] = torch.randperm(n - 1, generator=gen)[:k].sort().values + 1
    labels = torch.where(pos > 0, torch.randint(1000, vocab, pos.shape, generator=gen), 0)
    nsp = torch.randint(0, 2, (b,), generator=gen)
    return {"input_ids": ids, "segment_ids": seg, "input_mask": mask, "masked_lm_positions": pos,
            "masked_lm_ids": labels, "next_sentence_labels": nsp}


def hf_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same batch in HF's form: dense MLM labels with -100 where nothing is predicted."""
    labels = torch.full_like(batch["input_ids"], -100)
    labels.scatter_(1, batch["masked_lm_positions"], batch["masked_lm_ids"])
    labels[:, 0] = -100  # position 0 pads the position lists ([CLS] is never predicted)
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
        """Copy the bf16 gradients into fp32 buffers (one foreach copy), step, copy the masters
        back into the bf16 weights (one foreach copy)."""
        pairs = []
        for p, m in zip(self.params, self.masters):
            if p.grad is None:
                m.grad = None  # no gradient this step: AdamW skips the parameter
            else:
                if m.grad is None:
                    m.grad = torch.empty_like(m)
                pairs.append((p, m))
        torch._foreach_copy_([m.grad for _, m in pairs], [p.grad for p, _ in pairs])
        self.opt.step()
        with torch.no_grad():
            torch._foreach_copy_(self.params, self.masters)


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


def build_bertperf_unpad(cfg: BertConfig, batch, mode: str, precision: str, lr: float) -> Callable[[], None]:
    """bertperf with `unpad` (pad tokens skipped outside attention): for padded batches."""
    return build_bertperf(cfg.replace(unpad=True), batch, mode, precision, lr)


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


BUILDERS = {"bertperf": build_bertperf, "bertperf-unpad": build_bertperf_unpad, "hf": build_hf}


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


def gemm_precision(c: "Contender", args: argparse.Namespace) -> str:
    """The precision bertperf's GEMMs run in: eager bf16 with the cpu kernels on a CPU without AMX
    runs its projections as fp32 GEMMs (`bertperf.ops.linear`), so its MFU is against the fp32
    peak; every other contender's GEMMs run in its precision."""
    from bertperf.ops.linear import bf16_gemm_in_fp32

    if (c.name.startswith("bertperf") and c.precision == "bf16" and c.mode == "eager"
            and args.kernel_backend in ("auto", "cpu") and device().type == "cpu" and bf16_gemm_in_fp32()):
        return "fp32"
    return c.precision


def time_steps(step: Callable[[], None], steps: int) -> float:
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return time.perf_counter() - t


def run_case(model: str, seq: int, args: argparse.Namespace, peaks: dict[str, float]) -> list[dict]:
    masked = MASKED.get(seq, round(0.15 * seq))
    cfg = bench_config(model, seq, args)
    b, steps = case_batch(args, seq), case_steps(args, model, seq)
    batch = make_batch(cfg.vocab_size, b, seq, masked, min_len=args.min_len)
    torch._dynamo.reset()  # a fresh cache per case (the previous case's graphs are of other shapes)
    contenders: list[Contender] = []
    for name in args.frameworks:
        for mode in args.modes:
            for precision in args.precisions:
                torch.manual_seed(0)
                # no torch._dynamo.reset() here: it would drop the graphs compiled for the contenders
                # built before, which then recompile inside the timed rounds
                c = Contender(name, mode, precision, BUILDERS[name](cfg, batch, mode, precision, 1e-4))
                t = time.perf_counter()
                for _ in range(args.warmup_compile if mode == "compile" else args.warmup):
                    c.step()
                c.warmup_s = time.perf_counter() - t
                print(f"  warm-up {model} s{seq} {c.label}: {c.warmup_s:.1f} s", file=sys.stderr, flush=True)
                contenders.append(c)
    rates: dict[str, list[float]] = {c.label: [] for c in contenders}
    for _ in range(args.rounds):
        for c in contenders:
            rates[c.label].append(b * steps / time_steps(c.step, steps))
    fps = pretrain_flops_per_sequence(cfg, seq, masked)
    # the FLOPs HF executes: its MLM head runs at every position (m = s in the same formula)
    own_fps = {"hf": pretrain_flops_per_sequence(cfg, seq, seq)}
    if cfg.sparse_last_layer:  # bertperf's last layer computes [CLS] and the masked rows only
        own_fps["bertperf"] = own_fps["bertperf-unpad"] = pretrain_flops_per_sequence(cfg, seq, masked, masked + 1)
    rows = []
    for c in contenders:
        med = statistics.median(rates[c.label])
        tflops = fps * med / 1e12
        gemm = gemm_precision(c, args)
        rows.append({"model": model, "seq": seq, "batch": b, "min_len": args.min_len, "steps": steps,
                     "rounds": args.rounds,
                     "threads": torch.get_num_threads(),
                     "contender": c.name, "mode": c.mode, "precision": c.precision,
                     "seq_per_s": round(med, 3), "seq_per_s_min": round(min(rates[c.label]), 3),
                     "seq_per_s_max": round(max(rates[c.label]), 3),
                     "x_best_hf_same_precision": None, "x_hf_fp32_eager": None,  # add_ratios
                     "tflops": round(tflops, 4), "mfu": round(tflops * 1e12 / peaks[gemm], 4),
                     "mfu_own_flops": round(own_fps.get(c.name, fps) * med / peaks[gemm], 4),
                     "gemm_precision": gemm,  # what its GEMMs run in
                     "peak_gflops": round(peaks[gemm] / 1e9, 1),  # the peak GEMM rate the MFU uses
                     "warmup_s": round(c.warmup_s, 1)})
    del contenders
    gc.collect()
    return add_ratios(rows)


def add_ratios(rows: list[dict]) -> list[dict]:
    """Fill the cross-contender columns in place over the rows of each (model, seq):
    `x_best_hf_same_precision` = seq/s / the best HF seq/s of the same precision (any mode) and
    `x_hf_fp32_eager` = seq/s / HF eager fp32's (None where the reference was not run). Used for
    one process's rows and for the rows merged from the per-mode processes alike."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["seq"]), []).append(r)
    for group in groups.values():
        hf = [r for r in group if r["contender"] == "hf"]
        best_hf = {p: max((r["seq_per_s"] for r in hf if r["precision"] == p), default=None)
                   for p in {r["precision"] for r in group}}
        hf_fp32_eager = next((r["seq_per_s"] for r in hf if (r["mode"], r["precision"]) == ("eager", "fp32")), None)
        for r in group:
            ref = best_hf[r["precision"]]
            r["x_best_hf_same_precision"] = round(r["seq_per_s"] / ref, 3) if ref else None
            r["x_hf_fp32_eager"] = round(r["seq_per_s"] / hf_fp32_eager, 3) if hf_fp32_eager else None
    return rows


def profile_case(model: str, seq: int, args: argparse.Namespace) -> list[dict]:
    """Self CPU time per torch op over `--steps` steps of one contender (after warm-up)."""
    from torch.profiler import ProfilerActivity, profile

    name, mode, precision = args.profile
    masked = MASKED.get(seq, round(0.15 * seq))
    cfg = bench_config(model, seq, args)
    b, steps = case_batch(args, seq), case_steps(args, model, seq)
    batch = make_batch(cfg.vocab_size, b, seq, masked, min_len=args.min_len)
    torch.manual_seed(0)
    step = BUILDERS[name](cfg, batch, mode, precision, 1e-4)
    for _ in range(args.warmup_compile if mode == "compile" else args.warmup):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    rows = [{"framework": name, "mode": mode, "precision": precision, "batch": b,
             "op": e.key, "calls": e.count, "self_ms": round(e.self_cpu_time_total / 1e3 / steps, 3),
             "percent": round(100 * e.self_cpu_time_total / total, 2)}
            for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:args.profile_top]]
    return rows


def format_peaks(peaks: dict[str, dict[str, float]]) -> str:
    """`{process: {precision: FLOP/s}}` as one phrase: "peak GEMM measured in this run: fp32 X
    GFLOP/s, ..." for one process (key ""), "peak GEMM per process: eager fp32 X GFLOP/s, ...;
    compile ..." for one process per mode."""
    parts = [(f"{proc} " if proc else "") + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in pk.items())
             for proc, pk in peaks.items()]
    head = "peak GEMM measured in this run: " if list(peaks) == [""] else "peak GEMM per process: "
    return head + "; ".join(parts)


def format_rows(rows: list[dict], peaks: dict[str, dict[str, float]]) -> str:
    lines = ["| model | seq | contender | mode | prec | seq/s median [min, max] | x best HF (same prec) "
             "| x HF fp32 eager | TFLOP/s | MFU | MFU own FLOPs |", "|" + "---|" * 11]
    for r in rows:
        lines.append(f"| {r['model']} | {r['seq']} | {r['contender']} | {r['mode']} | {r['precision']} "
                     f"| {r['seq_per_s']:.2f} [{r['seq_per_s_min']:.2f}, {r['seq_per_s_max']:.2f}] "
                     f"| {r['x_best_hf_same_precision'] or '-'} | {r['x_hf_fp32_eager'] or '-'} "
                     f"| {r['tflops']:.3f} | {100 * r['mfu']:.1f}% | {100 * r.get('mfu_own_flops', r['mfu']):.1f}% |")
    lines.append("")
    lines.append(format_peaks(peaks) + f"; {torch.get_num_threads()} thread(s); "
                 f"load average {os.getloadavg()[0]:.2f}; {describe()}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS) + ["large"])
    p.add_argument("--seqs", type=int, nargs="+", default=[128], help="sequence lengths for every model")
    p.add_argument("--base512", action=argparse.BooleanOptionalAction, default=True,
                   help="also base at seq 512 (default on)")
    p.add_argument("--frameworks", nargs="+", default=["bertperf", "hf"], choices=list(BUILDERS),
                   help="bertperf-unpad = bertperf with config.unpad (pays with --min_len)")
    p.add_argument("--min_len", type=int, default=None,
                   help="padded batches: sequence lengths uniform in [MIN_LEN, seq] (default: full length)")
    p.add_argument("--modes", nargs="+", default=["eager", "compile"], choices=["eager", "compile"])
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=8, help="sequences per step at seq <= 128")
    p.add_argument("--batch_long", type=int, default=None,
                   help="sequences per step at seq > 128 (default: the same tokens as --batch x 128)")
    p.add_argument("--steps", type=int, default=None,
                   help=f"steps per round (default per model: {STEPS}, / 4 at seq 512)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2, help="untimed steps of an eager contender")
    p.add_argument("--warmup_compile", type=int, default=4,
                   help="untimed steps of a compiled contender (the first compiles; later ones catch "
                        "recompilations, e.g. of the backward or the optimizer step)")
    p.add_argument("--kernel_backend", default="auto", help="bertperf's fused-kernel backend (default: the model's)")
    p.add_argument("--attention_impl", default="auto", choices=list(ATTENTION_IMPLS),
                   help="bertperf's attention (see bertperf.model.bert.attention)")
    p.add_argument("--gemm", type=int, default=2048, help="size of the peak-GEMM probe")
    p.add_argument("--profile", nargs=3, metavar=("FRAMEWORK", "MODE", "PRECISION"), default=None,
                   help="instead of the matrix: per-op self CPU time of one contender (torch.profiler) for "
                        "each model, e.g. --profile bertperf eager fp32; JSON kind 'profile'")
    p.add_argument("--profile_top", type=int, default=25, help="ops kept in the profile")
    p.add_argument("--json", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "e2e.json"))
    add_malloc_argument(p)
    args = p.parse_args(argv)
    use_malloc(args, argv)
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
        tag = "-".join(args.profile)
        path = args.json if args.json != p.get_default("json") else args.json.replace("e2e.json", f"profile-{tag}.json")
        write_bench_json(path, "profile", f"Where a training step's time goes: {' '.join(args.profile)}", rows,
                         [f"torch.profiler self CPU time per step (top {args.profile_top} ops per model), "
                          f"steps per model {[case_steps(args, m, s) for m in args.models for s in args.seqs]} "
                          f"after warm-up, batch {args.batch} at seq <= 128, {args.threads} threads, "
                          f"bertperf kernel_backend {args.kernel_backend}, attention_impl {args.attention_impl}, "
                          f"load average {os.getloadavg()[0]:.2f}; {describe()}"])
        print(f"\nwrote {path}")
        return 0
    modes = list(dict.fromkeys(args.modes))
    if len(modes) > 1:
        rows, peaks = run_per_mode_processes(modes, argv, args)
    else:
        rows, peaks = run_matrix(args)
    print(format_rows(rows, peaks))
    notes = [format_peaks(peaks) + f" ({args.gemm}^3 matmul, {args.threads} threads; MFU of a row uses the "
             "peaks of its own process)",
             "FLOPs: matmul only, 3x forward, MLM head at the masked positions (bertperf.report.flops), the same "
             "for both contenders",
             f"batch {args.batch} at seq 128, {case_batch(args, 512)} at seq 512; {args.rounds} alternating rounds "
             f"of {args.steps or STEPS} steps (/4 at seq 512); warm-up excluded: {args.warmup} steps eager, "
             f"{args.warmup_compile} compiled (compilation included there)",
             f"bertperf: kernel_backend {args.kernel_backend}, attention_impl {args.attention_impl}",
             describe() + (", the same for every contender (one process)" if len(modes) == 1 else
                           ", the same for every contender (one fresh process per mode: " + ", ".join(modes)
                           + "; contenders alternate within a process; compiled contenders slowed eager ones "
                           "down when they shared a process)")]
    if args.min_len:
        notes.append(f"padded batches: lengths uniform in [{args.min_len}, seq]; FLOPs and MFU still count "
                     f"every position as a token (the padded work), so they overstate an unpadded run's work")
    title = "Pre-training throughput: bertperf vs Hugging Face"
    if args.min_len:
        title += f" (padded batches, lengths {args.min_len}-seq)"
    write_bench_json(args.json, "e2e", title, rows, notes)
    print(f"\nwrote {args.json}")
    return 0


def bench_cases(args: argparse.Namespace) -> list[tuple[str, int]]:
    """(model, seq) of every case, in run order: each model at each --seqs, then base at 512."""
    cases = [(m, s) for m in args.models for s in args.seqs]
    if args.base512 and "base" in args.models and 512 not in args.seqs:
        cases.append(("base", 512))
    return cases


def run_matrix(args: argparse.Namespace) -> tuple[list[dict], dict[str, dict[str, float]]]:
    """Every case in this process (the peak GEMM first): the rows and `{"": peaks}`."""
    peaks = {"fp32": peak_gemm(args.gemm, torch.float32), "bf16": peak_gemm(args.gemm, torch.bfloat16)}
    rows: list[dict] = []
    for model, seq in bench_cases(args):
        case_rows = run_case(model, seq, args, peaks)
        print(format_rows(case_rows, {"": peaks}), file=sys.stderr, flush=True)
        rows += case_rows
    return rows, {"": peaks}


def run_per_mode_processes(modes: list[str], argv: list[str] | None, args: argparse.Namespace,
                           ) -> tuple[list[dict], dict[str, dict[str, float]]]:
    """Each mode in a fresh child process (this script with the same arguments plus `--modes MODE
    --json TMP --malloc M`; its output goes to stderr), then the rows merged in the single-process
    order (case, framework, mode, precision) with the ratio columns over each case's merged rows.
    Returns the rows and `{mode: peaks of that child}` (each row carries the peak its MFU used)."""
    base = list(sys.argv[1:] if argv is None else argv)
    rows: list[dict] = []
    peaks: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_e2e-") as tmp:
        for mode in modes:
            path = os.path.join(tmp, f"{mode}.json")
            cmd = [sys.executable, os.path.abspath(__file__), *base, "--modes", mode, "--json", path,
                   "--malloc", args.malloc]
            print(f"bench_e2e: {mode} contenders in a fresh process", file=sys.stderr, flush=True)
            sys.stdout.flush()
            done = subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr, check=False)
            if done.returncode != 0:
                raise BertperfError(f"the {mode} process failed (exit code {done.returncode}; its output is "
                                    f"above): {' '.join(cmd)}")
            with open(path, encoding="utf-8") as f:
                doc = json.load(f)
            peaks[mode] = {r.get("gemm_precision", r["precision"]): r["peak_gflops"] * 1e9 for r in doc["rows"]}
            rows += doc["rows"]
    order = {k: i for i, k in enumerate(bench_cases(args))}
    rows.sort(key=lambda r: (order.get((r["model"], r["seq"]), len(order)), args.frameworks.index(r["contender"]),
                             modes.index(r["mode"]), args.precisions.index(r["precision"])))
    return add_ratios(rows), peaks


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="bench_e2e"))
