"""Pretraining-step throughput of the whole model: fused kernels vs eager torch, end to end.

Contenders (kernel_backend / attention_impl): `torch/sdpa` (eager torch, the baseline),
`auto/sdpa` (the fused LayerNorm, bias+GELU and bias+dropout+residual ops: the C++ kernels on a
CPU, CUDA kernels on a GPU) and `auto/fused` (those plus scores by matmul and the fused
scale+mask+softmax+dropout op instead of SDPA).

One step = zero_grad + forward (sparse MLM head: only the masked positions reach the decoder)
+ backward of mlm_loss + nsp_loss, in training mode with the preset's dropout (0.1). Both
contenders hold identical weights and see the same batch; they are timed in the same process,
alternating (torch, fused, torch, fused, ...) so a change in the machine's load hits both; each
contender's figure is its best round (the minimum, as bench/common.py does: other work shares
this machine). bf16 = torch.autocast(cpu, bfloat16) with fp32 weights.

    python bench/bench_model_kernels.py [--presets tiny mini base] [--threads 1 2]
        [--dtypes fp32 bf16] [--batch 8] [--seq 128] [--rounds 5] [--contenders ...]

Prints a markdown table: sequences/s of each contender and its ratio to the first one.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import DTYPES, device  # noqa: E402

from bertperf.model import BertConfig  # noqa: E402
from bertperf.model.config import ATTENTION_IMPLS, MODEL_KERNEL_BACKENDS  # noqa: E402
from bertperf.model.heads import BertForPreTraining  # noqa: E402

CONTENDERS = ("torch/sdpa", "auto/sdpa", "auto/fused")


def make_batch(cfg: BertConfig, b: int, s: int, masked: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Full-length sequences, two segments, `masked` MLM positions per sequence, random NSP labels."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, cfg.vocab_size, (b, s), generator=gen)
    seg = torch.zeros(b, s, dtype=torch.long)
    seg[:, s // 2:] = 1
    mask = torch.ones(b, s, dtype=torch.long)
    pos = torch.stack([torch.randperm(s - 1, generator=gen)[:masked].sort().values + 1 for _ in range(b)])
    labels = torch.randint(1, cfg.vocab_size, pos.shape, generator=gen)
    nsp = torch.randint(0, 2, (b,), generator=gen)
    return ids, seg, mask, pos, labels, nsp


def step_fn(model: BertForPreTraining, batch: tuple[torch.Tensor, ...], bf16: bool):
    def step() -> None:
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(*batch)
        out.loss.backward()
    return step


def time_round(fn, min_s: float) -> float:
    """Seconds per call over a batch of calls lasting at least `min_s` (one call at least)."""
    n, start = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_s:
            return elapsed / n


def bench_one(preset: str, threads: int, dtype: str, args: argparse.Namespace) -> dict[str, float]:
    """Best seconds per step of each contender (alternating rounds)."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    models = {}
    first = args.contenders[0]
    for name in args.contenders:
        backend, impl = name.split("/")
        cfg = BertConfig.preset(preset, kernel_backend=backend, attention_impl=impl)
        models[name] = BertForPreTraining(cfg).to(device()).train()
        if name != first:
            models[name].load_state_dict(models[first].state_dict())
    batch = tuple(t.to(device()) for t in make_batch(models[first].config, args.batch, args.seq, args.masked))
    steps = {name: step_fn(m, batch, dtype == "bf16") for name, m in models.items()}
    for fn in steps.values():  # warm-up (allocator, kernel loading, autocast caches)
        fn()
        fn()
    best = {name: float("inf") for name in args.contenders}
    for _ in range(args.rounds):
        for name in args.contenders:
            best[name] = min(best[name], time_round(steps[name], args.min_round_s))
    return best


def _contender(spec: str) -> str:
    backend, sep, impl = spec.partition("/")
    if not sep or backend not in MODEL_KERNEL_BACKENDS or impl not in ATTENTION_IMPLS:
        raise argparse.ArgumentTypeError(
            f"contender {spec!r}: write kernel_backend/attention_impl, e.g. cpu/fused "
            f"(backends {', '.join(MODEL_KERNEL_BACKENDS)}; attention {', '.join(ATTENTION_IMPLS)})")
    return spec


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["tiny", "mini", "base"])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=list(DTYPES))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--masked", type=int, default=20, help="MLM positions per sequence")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds per contender")
    p.add_argument("--min-round-s", type=float, default=0.5, help="minimum seconds of one round")
    p.add_argument("--contenders", nargs="+", type=_contender, default=list(CONTENDERS),
                   help="kernel_backend/attention_impl pairs; the first is the baseline")
    args = p.parse_args(argv)
    if device().type != "cpu":
        args.threads = [torch.get_num_threads()]
    saved = torch.get_num_threads()
    base = args.contenders[0]
    others = args.contenders[1:]
    lines = [f"pretraining step (fwd+bwd, sparse MLM, dropout 0.1), batch {args.batch} x seq {args.seq}, "
             f"{args.masked} masked/seq, device {device()}, torch {torch.__version__}; seq/s, best of "
             f"{args.rounds} alternating rounds; x = contender / {base}",
             "", "| preset | threads | dtype | " + " | ".join(f"{c} seq/s" for c in args.contenders)
             + "".join(f" | x {c}" for c in others) + " |",
             "|---|---|---|" + "---|" * (len(args.contenders) + len(others))]
    try:
        for preset in args.presets:
            for threads in args.threads:
                for dtype in args.dtypes:
                    best = bench_one(preset, threads, dtype, args)
                    sps = {name: args.batch / s for name, s in best.items()}
                    line = (f"| {preset} | {threads} | {dtype} | "
                            + " | ".join(f"{sps[c]:.2f}" for c in args.contenders)
                            + "".join(f" | {sps[c] / sps[base]:.3f}" for c in others) + " |")
                    print(line, file=sys.stderr, flush=True)
                    lines.append(line)
    finally:
        torch.set_num_threads(saved)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
