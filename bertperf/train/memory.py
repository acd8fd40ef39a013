"""Per-rank memory of a DeepSpeed training job: the bytes of the tensors each rank actually holds.

`measure(engine)` walks what the rank holds and counts every tensor storage once (views and the
flat buffers ZeRO builds are deduplicated by storage), in the first category that claims it:

    params       storages of the module's parameters: `p.data`, and under ZeRO-3 the rank's
                 partition `p.ds_tensor` (plus the full copies of parameters it keeps gathered,
                 DeepSpeed's "persistent" small ones). Under ZeRO-1/2 the parameters are views of
                 one flat buffer per group, counted once with its padding.
    master       fp32 master copies the optimizer updates that are not the module's parameters:
                 the rank's flat fp32 partitions under ZeRO-1/2/3 (none under ZeRO-0 in fp32).
    optim_state  the optimizer's state tensors (AdamW: exp_avg, exp_avg_sq, step).
    grads        `.grad` of parameters and of master partitions, tensors DeepSpeed hangs on the
                 parameters (`grad_accum`), and every other tensor the ZeRO optimizer object holds
                 outside its communication buckets (found by walking its attributes: gradient
                 partitions, flat gradient buffers).
    buffers      the ZeRO optimizer's reduce buckets (attributes named `ipg*` / `*bucket*`), as
                 allocated: DeepSpeed sizes them by `reduce_bucket_size` (default 5e8 elements),
                 not by the model, and the CPU only backs the pages that are written.
`found` lists the largest storages found by the walks, by attribute path, so the accounting can
be checked.

Gradients exist between backward and step (ZeRO frees them in step), so a caller measures once
after `engine.backward` ("after_backward": parameters, gradients, masters and the optimizer state
of the previous steps are all resident, the high-water mark of a step) and once after
`engine.step` ("after_step").
Process peak RSS (`peak_rss_bytes`, ru_maxrss) is reported as well: it includes activations,
the allocator's slack and the libraries, which the tensor counts leave out.

`python -m bertperf.train.memory --zero_stage S ...` runs a short synthetic job on N local ranks
(one process each, rendezvous through RANK/WORLD_SIZE/MASTER_* on 127.0.0.1) and prints one JSON
report per rank; `bench/bench_zero_memory.py` builds the ZeRO 0-3 table from it.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

import torch

from bertperf.utils.errors import BertperfError, run_cli

log = logging.getLogger(__name__)

CATEGORIES = ("params", "grads", "master", "optim_state", "buffers")
# attribute paths of the ZeRO optimizer that hold communication buckets, not gradients
BUCKET_PATH = re.compile(r"ipg|bucket", re.IGNORECASE)
PROG = "python -m bertperf.train.memory"


# ----------------------------------------------------------------------------------- accounting


def _storage_key(t: torch.Tensor) -> tuple[int, int] | None:
    """(data pointer, bytes) of the storage behind `t`; None for empty or meta tensors."""
    if t.device.type == "meta":
        return None
    st = t.untyped_storage()
    nbytes = st.nbytes()
    if nbytes == 0 or st.data_ptr() == 0:
        return None
    return st.data_ptr(), nbytes


def _walk_tensors(obj: Any, path: str, seen: set[int], depth: int) -> Iterator[tuple[str, torch.Tensor]]:
    """Tensors reachable from `obj` through lists, tuples, dicts and the attributes of DeepSpeed
    objects (not modules, not torch internals), with the attribute path that reaches each."""
    if id(obj) in seen or depth < 0:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        yield path, obj
        grad = obj.grad if obj.is_leaf else None
        if grad is not None:
            yield path + ".grad", grad
        return
    if isinstance(obj, (torch.nn.Module, torch.optim.Optimizer, str, bytes, int, float, bool, type(None))):
        return
    if isinstance(obj, dict):
        for k, v in list(obj.items()):
            yield from _walk_tensors(v, f"{path}[{k!r}]", seen, depth - 1)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for i, v in enumerate(list(obj)):
            yield from _walk_tensors(v, f"{path}[{i}]", seen, depth - 1)
    elif type(obj).__module__.startswith("deepspeed") and hasattr(obj, "__dict__"):
        for k, v in list(vars(obj).items()):
            yield from _walk_tensors(v, f"{path}.{k}", seen, depth - 1)


def _inner_optimizer(engine: Any) -> torch.optim.Optimizer:
    """The torch optimizer that updates the weights (ZeRO wraps it; without ZeRO it may be bare)."""
    opt = engine.optimizer
    while not isinstance(opt, torch.optim.Optimizer) or type(opt).__module__.startswith("deepspeed"):
        inner = getattr(opt, "optimizer", None)
        if inner is None or inner is opt:
            break
        opt = inner
    return opt


@dataclass
class MemorySnapshot:
    """Bytes per category held by one rank at one point, and the largest storages the walks found."""

    bytes: dict[str, int]
    total: int
    rss_bytes: int
    peak_rss_bytes: int
    found: dict[str, int] = field(default_factory=dict)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far: ru_maxrss (KiB on Linux), or the current RSS
    where that is larger (the kernel updates ru_maxrss lazily, /proc counts pages a little differently)."""
    return max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, _rss_bytes())


def _master_tensors(engine: Any, inner: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The fp32 tensors the optimizer updates: its param groups, and the flat fp32 partitions of
    ZeRO-1/2 (`single_partition_of_fp32_groups`) and ZeRO-3 (`fp32_partitioned_groups_flat`,
    put into the param groups only during a step)."""
    tensors = [t for g in inner.param_groups for t in g["params"]]
    for name in ("single_partition_of_fp32_groups", "fp32_partitioned_groups_flat"):
        tensors += [t for t in getattr(engine.optimizer, name, None) or [] if isinstance(t, torch.Tensor)]
    return tensors


def measure(engine: Any, largest: int = 8) -> MemorySnapshot:
    """Count the bytes of every tensor storage this rank holds for `engine` (see the module doc)."""
    counted: set[tuple[int, int]] = set()
    totals = dict.fromkeys(CATEGORIES, 0)
    found: dict[str, int] = {}

    def claim(t: Any, category: str, where: str | None = None) -> None:
        if not isinstance(t, torch.Tensor):
            return
        key = _storage_key(t)
        if key is None or key in counted:
            return
        counted.add(key)
        totals[category] += key[1]
        if where is not None:
            found[f"{category}: {where}"] = key[1]

    params = list(engine.module.parameters())
    for p in params:
        claim(p.data, "params")
        claim(getattr(p, "ds_tensor", None), "params")
    inner = _inner_optimizer(engine)
    masters = _master_tensors(engine, inner)
    for t in masters:
        claim(t, "master")
    for state in inner.state.values():
        for v in state.values():
            claim(v, "optim_state")
    for p in params:
        claim(p.grad, "grads")
        claim(getattr(getattr(p, "ds_tensor", None), "grad", None), "grads")
    for t in masters:
        claim(t.grad, "grads")
    # what the ZeRO optimizer object holds, then what DeepSpeed attaches to parameters (grad_accum, ...)
    seen: set[int] = set()
    held = [] if engine.optimizer is inner else list(_walk_tensors(engine.optimizer, "optimizer", seen, depth=8))
    for i, p in enumerate(params):
        held += _walk_tensors(vars(p), f"param{i}", seen, depth=4)
    for where, t in held:
        if BUCKET_PATH.search(where):
            claim(t, "buffers", where)
    for where, t in held:
        claim(t, "grads", where)
    top = dict(sorted(found.items(), key=lambda kv: -kv[1])[:largest])
    return MemorySnapshot(totals, sum(totals.values()), _rss_bytes(), peak_rss_bytes(), top)


# ----------------------------------------------------------------------------------- worker


@dataclass
class JobSpec:
    """A short synthetic pre-training job: model size, ZeRO stage, batch shape, steps."""

    model_config: str = "tiny"
    zero_stage: int = 0
    micro_batch: int = 2
    seq_length: int = 128
    predictions: int = 20
    steps: int = 2
    seed: int = 1234


def synthetic_batch(spec: JobSpec, vocab_size: int, rank: int, step: int) -> dict[str, torch.Tensor]:
    """A pre-training batch of the shard schema ([B, S] ids, [B, P] masked positions, [B] NSP labels)."""
    g = torch.Generator().manual_seed(spec.seed * 1000 + rank * 100 + step)
    b, s, p = spec.micro_batch, spec.seq_length, spec.predictions
    positions = torch.stack([torch.randperm(s - 1, generator=g)[:p] + 1 for _ in range(b)]).sort(dim=1).values
    return {
        "input_ids": torch.randint(1000, vocab_size, (b, s), generator=g),
        "segment_ids": (torch.arange(s) >= s // 2).long().expand(b, s).contiguous(),
        "input_mask": torch.ones(b, s, dtype=torch.long),
        "masked_lm_positions": positions,
        "masked_lm_ids": torch.randint(1000, vocab_size, (b, p), generator=g),
        "next_sentence_labels": torch.randint(0, 2, (b,), generator=g),
    }


def ds_config_for(spec: JobSpec, world_size: int) -> dict[str, Any]:
    """fp32, AdamW as a client optimizer, the given ZeRO stage, DeepSpeed's defaults otherwise."""
    return {"train_micro_batch_size_per_gpu": spec.micro_batch, "gradient_accumulation_steps": 1,
            "train_batch_size": spec.micro_batch * world_size, "zero_optimization": {"stage": spec.zero_stage},
            "steps_per_print": 10**9}


def run_job(spec: JobSpec) -> dict[str, Any]:
    """Train `spec.steps` steps on this rank; measure after the last backward and the last step."""
    from bertperf.model import BertConfig, BertForPreTraining
    from bertperf.train import engine as eng
    from bertperf.train.optimizers import DEFAULT_OPTIMIZER, build_optimizer

    placement = eng.detect_placement()
    eng.set_threads(placement)
    eng.quiet_deepspeed()
    eng.init_distributed()
    config = BertConfig.resolve(spec.model_config)
    torch.manual_seed(spec.seed)
    model = BertForPreTraining(config)
    n_params = sum(p.numel() for p in model.parameters())
    optimizer = build_optimizer(model, DEFAULT_OPTIMIZER, "memory job")
    engine = eng.initialize(model, optimizer, None, ds_config_for(spec, placement.world_size))
    engine.train()
    after_backward = after_step = None
    losses = []
    for step in range(spec.steps):
        out = engine(**synthetic_batch(spec, config.vocab_size, placement.rank, step))
        engine.backward(out.loss)
        if step == spec.steps - 1:
            after_backward = measure(engine)
        engine.step()
        losses.append(float(out.loss))
    after_step = measure(engine)
    eng.barrier()
    return {"rank": placement.rank, "world_size": placement.world_size, "n_params": n_params,
            "spec": asdict(spec), "losses": losses,
            "after_backward": asdict(after_backward), "after_step": asdict(after_step),
            "peak_rss_bytes": peak_rss_bytes()}


def _wait_all(procs: list[subprocess.Popen], timeout: float) -> int | None:
    """Wait for every process. Returns None when all exited 0, else the rank of the first that
    failed (-1 on timeout); the caller ends the others (a rank whose peer died would otherwise
    wait in a collective until gloo's timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        codes = [p.poll() for p in procs]
        failed = [rank for rank, code in enumerate(codes) if code not in (None, 0)]
        if failed:
            return failed[0]
        if all(code == 0 for code in codes):
            return None
        if time.monotonic() > deadline:
            return -1
        time.sleep(0.2)


def launch_local(spec: JobSpec, world_size: int, timeout: float = 900) -> list[dict[str, Any]]:
    """Run `spec` on `world_size` local processes (env rendezvous on 127.0.0.1); one report per rank.

    A rank that fails, or a timeout -> BertperfError with the last output lines of that rank.
    """
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="bertperf-mem-") as tmp:
        procs, logs, outs = [], [], []
        try:
            for rank in range(world_size):
                env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                           LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                           HF_HUB_OFFLINE="1")
                outs.append(os.path.join(tmp, f"rank{rank}.json"))
                logs.append(os.path.join(tmp, f"rank{rank}.log"))
                cmd = [sys.executable, "-m", "bertperf.train.memory", "--worker", "--output", outs[-1],
                       *spec_args(spec)]
                with open(logs[-1], "w") as log_file:
                    procs.append(subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT))
            failed = _wait_all(procs, timeout)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        if failed is not None:
            rank = max(failed, 0)
            what = f"timed out after {timeout:.0f} s" if failed < 0 else f"rank {rank} exited {procs[rank].returncode}"
            with open(logs[rank]) as f:
                tail = "\n".join(f.read().splitlines()[-15:])
            raise BertperfError(f"memory job (ZeRO-{spec.zero_stage}, {world_size} ranks) {what}; "
                                f"last lines of rank {rank}:\n{tail}")
        reports = []
        for out in outs:
            with open(out) as f:
                reports.append(json.load(f))
    return reports


def spec_args(spec: JobSpec) -> list[str]:
    return ["--model_config", spec.model_config, "--zero_stage", str(spec.zero_stage), "--micro_batch",
            str(spec.micro_batch), "--seq_length", str(spec.seq_length), "--predictions", str(spec.predictions),
            "--steps", str(spec.steps), "--seed", str(spec.seed)]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Measure the per-rank tensor memory of a short "
                                "synthetic BERT pre-training job under DeepSpeed (fp32, AdamW).")
    p.add_argument("--model_config", default="tiny", metavar="NAME|FILE", help="preset or BERT config JSON")
    p.add_argument("--zero_stage", type=int, default=0, choices=(0, 1, 2, 3))
    p.add_argument("--micro_batch", type=int, default=2, metavar="B")
    p.add_argument("--seq_length", type=int, default=128, metavar="S")
    p.add_argument("--predictions", type=int, default=20, metavar="P", help="masked positions per sequence")
    p.add_argument("--steps", type=int, default=2, metavar="N")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--ranks", type=int, default=2, metavar="N", help="local ranks to launch (default %(default)s)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--output", metavar="FILE", help="write the JSON here instead of stdout")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    spec = JobSpec(args.model_config, args.zero_stage, args.micro_batch, args.seq_length, args.predictions,
                   args.steps, args.seed)
    if spec.steps < 1 or spec.micro_batch < 1 or not 0 < spec.predictions < spec.seq_length:
        raise BertperfError("--steps and --micro_batch must be >= 1 and 0 < --predictions < --seq_length")
    from bertperf.model import BertConfig

    BertConfig.resolve(spec.model_config)  # a bad name or file fails here, before any rank starts
    result: Any = run_job(spec) if args.worker else launch_local(spec, args.ranks)
    text = json.dumps(result, indent=1)
    if args.output:
        tmp = args.output + ".tmp"
        with open(tmp, "w") as f:
            f.write(text + "\n")
        os.replace(tmp, args.output)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(lambda: main(), prog=PROG))
