"""Shared timing and reporting for bench/bench_<op>.py (fused kernels vs torch composites).

Each op bench builds `Case`s: one fused function and the eager torch composite it replaces, on
the same inputs, forward and backward. `run_cases` times the fused kernel, the eager composite
and `torch.compile` of that composite in the same process, and reports the ratio and the bytes
per second against the copy bandwidth that `copy_bandwidth` measures in the same run (at a size
beyond the caches). Works on CPU (times 1 and 2 threads) and unchanged on a CUDA device.

Contenders: every kernel backend in `--backends` (default `default_backends`: the C++ kernels
on a CPU; the CUDA kernels plus Triton, when importable, on a GPU) is one row per case and
pass; the eager and compiled baselines are timed once per case and shared by those rows.
torch.compile's warm-up (the first call, which compiles) is excluded from its timing: `time_fn`
calls every function once before it starts the clock.
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_backends(dev: torch.device) -> list[str]:
    """Fused-kernel contenders that can run on `dev`: `cpu` on a CPU; on a GPU `cuda`, plus
    `triton` and NVIDIA `apex` when importable. `apex` is not a bertperf kernel backend: an op
    bench with an apex equivalent (layer_norm) times it, the others build no case for it."""
    if dev.type == "cuda":
        found = [m for m in ("triton", "apex") if importlib.util.find_spec(m) is not None]
        return ["cuda"] + found
    return ["cpu"]


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def time_fn(fn: Callable[[], object], dev: torch.device, repeats: int = 7, min_batch_s: float = 0.05) -> float:
    """Seconds per call: the best of `repeats` batches, each at least `min_batch_s` long (the
    minimum, not the median, because other processes share this 2-core machine)."""
    fn()
    _sync(dev)
    start = time.perf_counter()
    fn()
    _sync(dev)
    once = max(time.perf_counter() - start, 1e-7)
    n = max(1, int(min_batch_s / once))
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        _sync(dev)
        samples.append((time.perf_counter() - start) / n)
    return min(samples)


def copy_bandwidth(dev: torch.device, numel: int = 64 * 2**20) -> float:
    """Copy bandwidth in GB/s (bytes read + written) of a 64M-element fp32 tensor copy."""
    src = torch.randn(numel, device=dev)
    dst = torch.empty_like(src)
    seconds = time_fn(lambda: dst.copy_(src), dev, repeats=5, min_batch_s=0.2)
    del src, dst
    gc.collect()
    return 2 * numel * 4 / seconds / 1e9


@dataclass
class Case:
    """One measurement: `fused(*inputs)` and `eager(*inputs)` return the output tensor.

    `input_sets` holds one or more sets of inputs: the timed loop cycles through them, so with
    several sets (the "big" cases) every call reads its inputs from memory, not from cache.
    Inputs that require grad are the ones the backward differentiates. `bytes_fwd` /
    `bytes_bwd` are the minimal bytes a fused forward / backward must move (for GB/s).
    """

    op: str
    shape: str
    dtype: str
    fused: Callable[..., torch.Tensor]
    eager: Callable[..., torch.Tensor]
    input_sets: list[list[torch.Tensor | None]]
    bytes_fwd: int = 0
    bytes_bwd: int = 0
    big: bool = False  # beyond-cache size: report bandwidth


# Big cases: tensors of at most ~25 MB (glibc recycles such blocks instead of mmap-ing fresh,
# page-faulting memory for every output, which would dominate the timing of any op), and enough
# input sets that the inputs cycled through exceed 512 MB, beyond the caches.
BIG_WORKING_SET = 512 * 2**20


def input_set_count(bytes_per_set: int) -> int:
    return max(2, -(-BIG_WORKING_SET // bytes_per_set))


@dataclass
class Row:
    op: str
    shape: str
    dtype: str
    threads: int
    pass_: str
    backend: str
    fused_ms: float
    eager_ms: float
    compiled_ms: float | None
    gbps: float | None
    bw_frac: float | None

    @property
    def vs_eager(self) -> float:
        return self.eager_ms / self.fused_ms

    @property
    def vs_compiled(self) -> float | None:
        return None if self.compiled_ms is None else self.compiled_ms / self.fused_ms


def _cycle(fn: Callable[[int], object], k: int) -> Callable[[], object]:
    state = {"i": 0}

    def call():
        i = state["i"]
        state["i"] = (i + 1) % k
        return fn(i)

    return call


def _forward_timer(fn: Callable[..., torch.Tensor], sets: list[list]) -> Callable[[], object]:
    return _cycle(lambda i: fn(*sets[i]), len(sets))


def _backward_timer(fn: Callable[..., torch.Tensor], sets: list[list]) -> Callable[[], object]:
    """Times only the backward: one forward per input set, then autograd.grad with kept graphs."""
    graphs = []
    for inputs in sets:
        out = fn(*inputs)
        wrt = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
        graphs.append((out, wrt, torch.randn_like(out)))
    return _cycle(lambda i: torch.autograd.grad(graphs[i][0], graphs[i][1], graphs[i][2],
                                                retain_graph=True), len(graphs))


def _timer(fn: Callable[..., torch.Tensor], case: Case, pass_: str, dev: torch.device) -> float:
    if pass_ == "fwd":
        with torch.no_grad():
            return time_fn(_forward_timer(fn, case.input_sets), dev)
    return time_fn(_backward_timer(fn, case.input_sets), dev)


def run_cases(cases: list[Case], threads: int, dev: torch.device, bandwidth: float,
              compile_: bool = True, backward: bool = True, backend: str = "auto",
              baselines: dict[tuple, tuple[float, float | None]] | None = None) -> list[Row]:
    """Times each case's fused function (built for `backend`) and, unless `baselines` already
    holds them for the same (op, shape, dtype, threads, pass), its eager composite and
    torch.compile of it (compiled once per case, `dynamic=False`, warm-up excluded)."""
    baselines = {} if baselines is None else baselines
    rows = []
    for case in cases:
        has_grad = any(isinstance(t, torch.Tensor) and t.requires_grad for t in case.input_sets[0])
        passes = [("fwd", case.bytes_fwd)]
        if backward and has_grad:
            passes.append(("bwd", case.bytes_bwd))
        compiled = None
        for pass_, nbytes in passes:
            key = (case.op, case.shape, case.dtype, threads, pass_)
            fused = _timer(case.fused, case, pass_, dev)
            if key not in baselines:
                if compile_ and compiled is None:
                    torch._dynamo.reset()  # compiled code keeps the thread count it was compiled with
                    compiled = torch.compile(case.eager, dynamic=False)
                eager = _timer(case.eager, case, pass_, dev)
                comp = _timer(compiled, case, pass_, dev) if compiled is not None else None
                baselines[key] = (eager, comp)
            eager, comp = baselines[key]
            gbps = nbytes / fused / 1e9 if case.big and nbytes else None
            rows.append(Row(case.op, case.shape, case.dtype, threads, pass_, backend, fused * 1e3,
                            eager * 1e3, None if comp is None else comp * 1e3, gbps,
                            None if gbps is None else gbps / bandwidth))
            gc.collect()
    return rows


def with_totals(rows: list[Row]) -> list[Row]:
    """Adds a `fwd+bwd` row after each fwd/bwd pair: the training cost of the op, which is what
    the fused op replaces (a fused op may move work between its passes, e.g. layer_norm
    recomputes x + bias + residual in the backward instead of storing it)."""
    out: list[Row] = []
    for r in rows:
        out.append(r)
        prev = out[-2] if len(out) >= 2 else None
        if (r.pass_ == "bwd" and prev is not None and prev.pass_ == "fwd"
                and (prev.op, prev.shape, prev.dtype, prev.threads, prev.backend)
                == (r.op, r.shape, r.dtype, r.threads, r.backend)):
            comp = (None if r.compiled_ms is None or prev.compiled_ms is None
                    else r.compiled_ms + prev.compiled_ms)
            out.append(Row(r.op, r.shape, r.dtype, r.threads, "fwd+bwd", r.backend, r.fused_ms + prev.fused_ms,
                           r.eager_ms + prev.eager_ms, comp, None, None))
    return out


def format_table(rows: list[Row], bandwidth: dict[int, float], dev: torch.device) -> str:
    head = ("| op | shape | dtype | thr | pass | backend | fused ms | eager ms | compile ms | x eager "
            "| x compile | GB/s | % copy bw |")
    lines = [head, "|" + "---|" * 13]
    for r in with_totals(rows):
        comp = f"{r.compiled_ms:.3f}" if r.compiled_ms is not None else "-"
        vc = f"{r.vs_compiled:.2f}" if r.vs_compiled is not None else "-"
        gb = f"{r.gbps:.1f}" if r.gbps is not None else "-"
        frac = f"{100 * r.bw_frac:.0f}%" if r.bw_frac is not None else "-"
        lines.append(f"| {r.op} | {r.shape} | {r.dtype} | {r.threads} | {r.pass_} | {r.backend} | {r.fused_ms:.3f} "
                     f"| {r.eager_ms:.3f} | {comp} | {r.vs_eager:.2f} | {vc} | {gb} | {frac} |")
    bw = ", ".join(f"{t} thread(s): {b:.1f} GB/s" for t, b in bandwidth.items())
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines.append("")
    lines.append(f"load average at the end: {load:.2f} on {os.cpu_count()} CPUs (other processes "
                 "sharing the CPUs make the times, above all the 2-thread ones, noisy).")
    lines.append(f"device {dev}; copy bandwidth measured in this run (64M fp32): {bw}. "
                 "x eager / x compile = baseline time / fused time (higher is better); times are "
                 "the best of 7 batches; torch.compile (inductor, dynamic=False) is warmed up "
                 "(compiled) before its timing starts.")
    from bertperf.utils.malloc import describe

    lines.append(describe() + ", for the fused ops and their baselines alike.")
    return "\n".join(lines)


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="CPU thread counts")
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=list(DTYPES))
    p.add_argument("--backends", "--backend", nargs="+", default=None,
                   help="kernel backends of the fused op (default: cpu on a CPU; cuda and triton on a GPU)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    p.add_argument("--no-big", action="store_true", help="skip the beyond-cache bandwidth sizes")
    p.add_argument("--no-backward", action="store_true", help="time forward passes only")
    add_malloc_argument(p)
    return p


def add_malloc_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--malloc", choices=["tcmalloc", "glibc"], default="tcmalloc",
                   help="allocator of this process, baselines included (default %(default)s, as bertperf's "
                        "training runs; bertperf.utils.malloc)")


def use_malloc(args: argparse.Namespace, argv: list[str] | None) -> None:
    """Run this bench process on the allocator `--malloc` names (re-executes it once for tcmalloc).
    Only when the bench is its own process (argv None): from Python it keeps the caller's."""
    if argv is None:
        from bertperf.utils import malloc

        os.environ[malloc.ENV_CHOICE] = args.malloc
        malloc.relaunch_with_tcmalloc()


def bench_main(build_cases: Callable[..., list[Case]], description: str, argv: list[str] | None = None,
               notes: list[str] | None = None) -> int:
    """Common CLI: builds cases per dtype, runs them at each thread count, prints the table and
    the op's `notes` (its byte arithmetic: what bounds the ratio against eager)."""
    args = parser(description).parse_args(argv)
    use_malloc(args, argv)
    rows, bandwidth = collect(build_cases, args)
    print(format_table(rows, bandwidth, device()))
    if notes:
        print("\n" + "\n".join(notes))
    return 0


def collect(build_cases: Callable[..., list[Case]], args: argparse.Namespace) -> tuple[list[Row], dict[int, float]]:
    dev = device()
    torch.manual_seed(0)
    thread_counts = args.threads if dev.type == "cpu" else [torch.get_num_threads()]
    rows: list[Row] = []
    bandwidth: dict[int, float] = {}
    saved = torch.get_num_threads()
    try:
        for t in thread_counts:
            torch.set_num_threads(t)
            bandwidth[t] = copy_bandwidth(dev)
            for name in args.dtypes:
                baselines: dict[tuple, tuple[float, float | None]] = {}
                for backend in args.backends or default_backends(dev):
                    cases = build_cases(dev, DTYPES[name], name, backend, big=not args.no_big)
                    rows += run_cases(cases, t, dev, bandwidth[t], compile_=not args.no_compile,
                                      backward=not args.no_backward, backend=backend,
                                      baselines=baselines)
                    del cases
                    gc.collect()
    finally:
        torch.set_num_threads(saved)
    return rows, bandwidth
