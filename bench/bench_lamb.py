"""Bench LAMB: one optimizer step over BERT-base's parameters (110M, its real tensor shapes).

Rows, all timed in the same process on the same shapes (fp32 params unless the row says bf16):
  per-tensor   a per-tensor torch LAMB (in-place ops, one tensor at a time): baseline 1
  foreach      a textbook torch._foreach LAMB (torch's _foreach_norm for the norms): baseline 2
  bertperf/X   bertperf.optim.Lamb(backend=X)
Every implementation does the same math: global grad-norm clipping (active), bias correction,
weight decay 0.01, trust ratio on every tensor. GB/s counts the compulsory traffic of a step:
read p, g, m, v and write p, m, v (28 bytes per parameter for fp32 and for bf16 with an fp32
master), against the copy bandwidth this run measures (bench/common.copy_bandwidth).

Run: `python bench/bench_lamb.py [--threads 1 2] [--repeats 3] [--backends torch cpu]`.
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_malloc_argument, copy_bandwidth, device, time_fn, use_malloc  # noqa: E402

from bertperf.optim import Lamb  # noqa: E402
from bertperf.optim import lamb as lamb_mod  # noqa: E402

LR, BETAS, EPS, WD, MAX_GRAD_NORM = 1e-3, (0.9, 0.999), 1e-6, 0.01, 1.0
BYTES_PER_PARAM = 28  # read p, g, m, v (4 + 4 + 4 + 4); write p, m, v (4 + 4 + 4)
# What the two-pass kernels actually move per parameter: the gradient-norm read, stage 1 (read
# p, g, m, v; write m, v) and stage 2 (read p, m, v; write p, plus the bf16 copy for bf16).
KERNEL_BYTES = {"fp32": 4 + 24 + 16, "bf16": 2 + 22 + 18}


def bert_base_shapes(vocab: int = 30522, hidden: int = 768, layers: int = 12, inter: int = 3072,
                     max_pos: int = 512, type_vocab: int = 2) -> list[tuple[int, ...]]:
    """The parameter shapes of BertForPreTraining (bert-base-uncased; decoder weight tied)."""
    h = hidden
    shapes: list[tuple[int, ...]] = [(vocab, h), (max_pos, h), (type_vocab, h), (h,), (h,)]
    for _ in range(layers):
        shapes += [(h, h), (h,)] * 4  # query, key, value, attention output
        shapes += [(h,), (h,)]  # attention LayerNorm
        shapes += [(inter, h), (inter,), (h, inter), (h,)]  # intermediate, output
        shapes += [(h,), (h,)]  # output LayerNorm
    shapes += [(h, h), (h,)]  # pooler
    shapes += [(h, h), (h,), (h,), (h,), (vocab,)]  # MLM transform, its LayerNorm, decoder bias
    shapes += [(2, h), (2,)]  # NSP head
    return shapes


@dataclass
class Problem:
    """Params with gradients set (grads sized so that clipping at 1.0 is active)."""

    params: list[torch.Tensor]

    @classmethod
    def make(cls, shapes: list[tuple[int, ...]], dtype: torch.dtype, dev: torch.device) -> "Problem":
        gen = torch.Generator(device=dev).manual_seed(0)
        params = []
        for s in shapes:
            p = torch.nn.Parameter((torch.randn(s, generator=gen, device=dev) * 0.02).to(dtype))
            p.grad = (torch.randn(s, generator=gen, device=dev) * 1e-3).to(dtype)
            params.append(p)
        return cls(params)


class PerTensorLamb:
    """Baseline 1: LAMB one tensor at a time with in-place torch ops (fp32 params)."""

    def __init__(self, params: list[torch.Tensor]) -> None:
        self.params = params
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.t = 0

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        b1, b2 = BETAS
        inv_bc1, inv_bc2 = 1 / (1 - b1**self.t), 1 / (1 - b2**self.t)
        total = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in self.params]))
        clip = min(1.0, MAX_GRAD_NORM / float(total))
        for p, m, v in zip(self.params, self.m, self.v):
            g = p.grad
            m.mul_(b1).add_(g, alpha=(1 - b1) * clip)
            v.mul_(b2).addcmul_(g, g, value=(1 - b2) * clip * clip)
            u = (m * inv_bc1).div_((v * inv_bc2).sqrt_().add_(EPS)).add_(p, alpha=WD)
            p_norm, u_norm = float(p.norm()), float(u.norm())
            ratio = p_norm / u_norm if p_norm > 0 and u_norm > 0 else 1.0
            p.sub_(u, alpha=LR * ratio)


class ForeachLamb:
    """Baseline 2: a textbook torch._foreach LAMB (fp32 params)."""

    def __init__(self, params: list[torch.Tensor]) -> None:
        self.params = params
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.t = 0

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        b1, b2 = BETAS
        grads = [p.grad for p in self.params]
        total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        clip = min(1.0, MAX_GRAD_NORM / float(total))
        torch._foreach_mul_(self.m, b1)
        torch._foreach_add_(self.m, grads, alpha=(1 - b1) * clip)
        torch._foreach_mul_(self.v, b2)
        torch._foreach_addcmul_(self.v, grads, grads, value=(1 - b2) * clip * clip)
        denom = torch._foreach_mul(self.v, 1 / (1 - b2**self.t))
        torch._foreach_sqrt_(denom)
        torch._foreach_add_(denom, EPS)
        u = torch._foreach_div(self.m, denom)
        del denom
        torch._foreach_mul_(u, 1 / (1 - b1**self.t))
        torch._foreach_add_(u, self.params, alpha=WD)
        p_norms = torch.stack(torch._foreach_norm(self.params))
        u_norms = torch.stack(torch._foreach_norm(u))
        ok = (p_norms > 0) & (u_norms > 0)
        ratios = torch.where(ok, p_norms / u_norms, torch.ones_like(p_norms))
        torch._foreach_mul_(u, (ratios * LR).tolist())
        torch._foreach_sub_(self.params, u)


def bertperf_lamb(backend: str) -> Callable[[list[torch.Tensor]], object]:
    def make(params: list[torch.Tensor]) -> Lamb:
        return Lamb(params, lr=LR, betas=BETAS, eps=EPS, weight_decay=WD,
                    max_grad_norm=MAX_GRAD_NORM, backend=backend)
    return make


@dataclass
class Row:
    impl: str
    dtype: str
    threads: int
    ms: float
    base_ms: dict[str, float]
    gbps: float
    bw: float
    kernel_gbps: float | None  # actual traffic of the two-pass kernels, for bertperf rows


def available(backend: str) -> bool:
    try:
        lamb_mod.get_backend(backend, device())
        return True
    except Exception:
        return False


def run(args: argparse.Namespace) -> tuple[list[Row], dict[int, float], int]:
    dev = device()
    shapes = bert_base_shapes()
    numel = sum(torch.Size(s).numel() for s in shapes)
    impls: list[tuple[str, str, Callable[[list[torch.Tensor]], object]]] = [
        ("per-tensor", "fp32", PerTensorLamb),
        ("foreach", "fp32", ForeachLamb),
    ]
    for b in args.backends:
        if not available(b):
            print(f"# backend {b!r} is not available here: skipped", file=sys.stderr)
            continue
        impls.append((f"bertperf/{b}", "fp32", bertperf_lamb(b)))
        if args.bf16:
            impls.append((f"bertperf/{b}", "bf16", bertperf_lamb(b)))
    rows: list[Row] = []
    bandwidth: dict[int, float] = {}
    saved = torch.get_num_threads()
    try:
        for threads in args.threads:
            torch.set_num_threads(threads)
            bandwidth[threads] = copy_bandwidth(dev)
            times: dict[tuple[str, str], float] = {}
            for name, dname, factory in impls:
                problem = Problem.make(shapes, torch.float32 if dname == "fp32" else torch.bfloat16, dev)
                opt = factory(problem.params)
                sec = time_fn(opt.step, dev, repeats=args.repeats, min_batch_s=0.0)
                times[(name, dname)] = sec
                del opt, problem
                gc.collect()
                print(f"# {threads} thread(s) {name} {dname}: {sec * 1e3:.1f} ms", file=sys.stderr)
            base = {"per-tensor": times[("per-tensor", "fp32")] * 1e3, "foreach": times[("foreach", "fp32")] * 1e3}
            for (name, dname), sec in times.items():
                gbps = BYTES_PER_PARAM * numel / sec / 1e9
                two_pass = name.startswith("bertperf/") and name != "bertperf/torch"
                kernel = KERNEL_BYTES[dname] * numel / sec / 1e9 if two_pass else None
                rows.append(Row(name, dname, threads, sec * 1e3, base, gbps, bandwidth[threads], kernel))
    finally:
        torch.set_num_threads(saved)
    return rows, bandwidth, numel


def format_table(rows: list[Row], bandwidth: dict[int, float], numel: int) -> str:
    lines = ["| impl | params | threads | ms/step | x per-tensor | x foreach | GB/s | % copy bw "
             "| kernel GB/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        kernel = f"{r.kernel_gbps:.1f}" if r.kernel_gbps is not None else "-"
        lines.append(f"| {r.impl} | {r.dtype} | {r.threads} | {r.ms:.1f} | {r.base_ms['per-tensor'] / r.ms:.2f} "
                     f"| {r.base_ms['foreach'] / r.ms:.2f} | {r.gbps:.1f} | {100 * r.gbps / r.bw:.0f}% "
                     f"| {kernel} |")
    bw = ", ".join(f"{t} thread(s) {b:.1f} GB/s" for t, b in bandwidth.items())
    lines += ["", f"{numel / 1e6:.1f}M parameters (BERT-base shapes). GB/s = {BYTES_PER_PARAM} B/param "
              "(the compulsory traffic: read p, g, m, v; write p, m, v) / time, against the copy "
              f"bandwidth measured in this run (64M fp32, read + write): {bw}. kernel GB/s = what the "
              f"two-pass bertperf step really moves ({KERNEL_BYTES['fp32']} B/param fp32, "
              f"{KERNEL_BYTES['bf16']} bf16) / time. x baseline = baseline ms / row ms (higher is better)."]
    return "\n".join(lines)


def load_note(before: tuple[float, float, float]) -> str:
    """The 1-minute load average before and after the run: a shared machine skews 2-thread rows."""
    return (f"1-min load average {before[0]:.1f} before, {os.getloadavg()[0]:.1f} after the run "
            f"on {os.cpu_count()} CPUs.")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="CPU thread counts")
    p.add_argument("--repeats", type=int, default=3, help="timed steps per implementation (median)")
    p.add_argument("--backends", nargs="+", default=["torch", "cpu"], choices=list(lamb_mod.BACKENDS[1:]))
    p.add_argument("--no-bf16", dest="bf16", action="store_false", help="skip the bf16-parameter rows")
    add_malloc_argument(p)
    args = p.parse_args(argv)
    use_malloc(args, argv)
    before = os.getloadavg()
    rows, bandwidth, numel = run(args)
    print(format_table(rows, bandwidth, numel))
    print(load_note(before))
    from bertperf.utils.malloc import describe

    print(describe() + ", for every implementation alike.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
