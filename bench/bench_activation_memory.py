"""Activation memory of one BERT pre-training step with and without `--checkpoint_activations`.

    python bench/bench_activation_memory.py [--sizes tiny mini small base] [--batch 8] [--seq 128]
        [--repeats 3] [--json out.json]

For each model size: one forward + backward of `BertForPreTraining` (dropout on, fp32, the sparse
MLM head) under `torch.profiler` with `profile_memory=True`. The profiler records every CPU tensor
allocation and free; the peak of their running sum, relative to the moment before the forward, is
the step's working memory (at op granularity): activations kept for the backward plus the gradients and the
temporaries of the backward. The difference between the two runs is what checkpointing saves;
"activations" is the live memory at the end of the forward (what the backward will consume).
Step time is the best of `--repeats` timed steps outside the profiler (1 process, all threads).
"""
from __future__ import annotations

import argparse
import copy
import json
import time

import torch

from bertperf.model import BertConfig, BertForPreTraining
from bertperf.train.activation_checkpoint import checkpoint_encoder_layers


def make_batch(config: BertConfig, b: int, s: int, p: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    positions = torch.stack([torch.randperm(s - 1, generator=g)[:p].sort().values + 1 for _ in range(b)])
    return {"input_ids": torch.randint(0, config.vocab_size, (b, s), generator=g),
            "segment_ids": (torch.arange(s) >= s // 2).long().expand(b, s).clone(),
            "input_mask": torch.ones(b, s, dtype=torch.long), "masked_lm_positions": positions,
            "masked_lm_ids": torch.randint(0, config.vocab_size, (b, p), generator=g),
            "next_sentence_labels": torch.randint(0, 2, (b,), generator=g)}


def memory_profile(model: torch.nn.Module, data: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(bytes live at the end of the forward, peak bytes during forward + backward), both relative
    to the start of the step, from the profiler's allocation events."""
    from torch.profiler import ProfilerActivity, profile, record_function

    model.zero_grad(set_to_none=True)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        with record_function("bench_forward"):
            loss = model(**data).loss
        with record_function("bench_backward"):
            loss.backward()
    events = prof.events()
    fwd_end = max(e.time_range.end for e in events if e.name == "bench_forward")
    # an op's own allocations minus its own frees (children excluded), and "[memory]" events for
    # frees outside any op, in time order: their running sum is the live memory of the step
    mem = sorted((e.time_range.start, e.self_cpu_memory_usage) for e in events if e.self_cpu_memory_usage)
    live = peak = at_fwd_end = 0
    for t, delta in mem:
        live += delta
        peak = max(peak, live)
        if t <= fwd_end:
            at_fwd_end = live
    return at_fwd_end, peak


def step_seconds(model: torch.nn.Module, data: dict[str, torch.Tensor], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats + 1):  # the first one warms up
        model.zero_grad(set_to_none=True)
        t = time.perf_counter()
        model(**data).loss.backward()
        best = min(best, time.perf_counter() - t)
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", default=["tiny", "mini", "small"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--predictions", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None, help="also write the rows here")
    args = p.parse_args(argv)
    rows = []
    print(f"batch {args.batch} x seq {args.seq}, {args.predictions} predictions, fp32, dropout on, "
          f"{torch.get_num_threads()} threads")
    print(f"{'size':<6} {'layers':>6} {'act MB plain':>13} {'act MB ckpt':>12} {'peak MB plain':>14} "
          f"{'peak MB ckpt':>13} {'saved MB':>9} {'saved %':>8} {'step s plain':>13} {'step s ckpt':>12}")
    for size in args.sizes:
        config = BertConfig.preset(size)
        torch.manual_seed(0)
        plain = BertForPreTraining(config).train()
        ckpt = copy.deepcopy(plain)
        checkpoint_encoder_layers(ckpt)
        data = make_batch(config, args.batch, args.seq, args.predictions)
        act0, peak0 = memory_profile(plain, data)
        act1, peak1 = memory_profile(ckpt, data)
        t0, t1 = step_seconds(plain, data, args.repeats), step_seconds(ckpt, data, args.repeats)
        row = {"size": size, "layers": config.num_hidden_layers, "batch": args.batch, "seq": args.seq,
               "activation_bytes_plain": act0, "activation_bytes_checkpointed": act1,
               "peak_bytes_plain": peak0, "peak_bytes_checkpointed": peak1,
               "step_s_plain": t0, "step_s_checkpointed": t1}
        rows.append(row)
        mb = 2 ** 20
        print(f"{size:<6} {config.num_hidden_layers:>6} {act0 / mb:>13.1f} {act1 / mb:>12.1f} {peak0 / mb:>14.1f} "
              f"{peak1 / mb:>13.1f} {(peak0 - peak1) / mb:>9.1f} {100 * (peak0 - peak1) / peak0:>7.1f}% "
              f"{t0:>13.3f} {t1:>12.3f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
