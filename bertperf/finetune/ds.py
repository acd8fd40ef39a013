"""Fine-tuning under DeepSpeed: `deepspeed [--num_gpus N] bertperf/finetune.py TASK ... --deepspeed_config J`.

The run is the plain one (`bertperf.finetune.trainer.train`) with a DeepSpeed engine taking the
steps; every rank reads and encodes the same data and draws the same shuffled order, and each
global batch of `batch_size` rows (FinetuneConfig) is split between the ranks, so N ranks follow
the trajectory of one process up to floating-point reduction order (and bf16 rounding).

The DeepSpeed JSON supplies ZeRO (stage 0, 1 or 2) and bf16; the hyper-parameters stay in the
FinetuneConfig (`--config`), as in the plain run:
- "optimizer" / "scheduler" sections are refused: the optimizer is AdamW with BERT's weight
  decay groups and the schedule linear warmup + decay (`trainer.PlainStepper`), given to
  DeepSpeed as a client optimizer and lr scheduler.
- batch: train_batch_size / train_micro_batch_size_per_gpu, when present, set the global
  batch (gradient_accumulation_steps must be 1); otherwise they are filled in from
  FinetuneConfig.batch_size, which must divide by the number of ranks.
- gradient_clipping defaults to FinetuneConfig.max_grad_norm; `--bf16` turns "bf16" on.
- ZeRO-3 is refused (evaluation here reads the full weights on each rank); fp16 too (CPU).

Evaluation every `eval_every` steps is sharded: each rank predicts a slice of the dev set, the
logits are gathered (`predict(shard=True)`), and every rank computes the same metrics, so early
stopping is decided identically everywhere. The best weights are collected in fp32 (DeepSpeed's
fp32 masters under bf16 / ZeRO, `safe_get_full_fp32_param`, a collective), copied into a plain
fp32 copy of the model kept on rank 0, and saved from there to `<output_dir>/best`; rank 0 then
scores dev and writes the predictions with that copy, as the plain run does.

Process exit: a process that ran this must end without interpreter teardown, where a rank can
abort after its work is done: `bertperf/finetune.py` calls
`bertperf.train.engine.end_process_after_distributed_run` on every rank (its docstring has the
mechanism, traced with gdb).
"""
from __future__ import annotations

import argparse
import copy
import logging
import os
import sys
from typing import Any

import torch

from bertperf.finetune.trainer import (FinetuneConfig, _trim, adamw_param_groups, batch_with_trimmed_labels,
                                       forward_logits, head_loss, make_schedule, total_steps)
from bertperf.utils.errors import BertperfError

log = logging.getLogger(__name__)

QUIET_STEPS_PER_PRINT = 10**9


def finetune_ds_config(path: str, cfg: FinetuneConfig, world: int) -> tuple[dict[str, Any], int]:
    """The dict for `deepspeed.initialize` and the ZeRO stage (module doc). Updates cfg's
    batch_size, max_grad_norm and bf16 to what the run will use."""
    from bertperf.train.ds_config import read_json, resolve_batch

    ds = read_json(path)
    for key in ("optimizer", "scheduler"):
        if key in ds:
            raise BertperfError(f"{path}: fine-tuning takes the optimizer and lr schedule from --config "
                                f"(FinetuneConfig: learning_rate, warmup_proportion, ...): remove \"{key}\"")
    if any(k in ds for k in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")):
        micro, accum, total = resolve_batch(ds, world, path)
        if accum != 1:
            raise BertperfError(f"{path}: gradient_accumulation_steps is {accum}; fine-tuning supports 1 "
                                "(raise train_batch_size instead)")
        if total != cfg.batch_size:
            log.info("%s: global batch %d (from the DeepSpeed JSON) replaces --config's %d", path, total,
                     cfg.batch_size)
        cfg.batch_size = total
    else:
        if cfg.batch_size % world:
            raise BertperfError(f"batch_size {cfg.batch_size} (--config) does not divide among {world} ranks: "
                                f"use a multiple of {world}, or set train_batch_size in {path}")
        micro = cfg.batch_size // world
    ds.update(train_micro_batch_size_per_gpu=micro, gradient_accumulation_steps=1,
              train_batch_size=micro * world)
    zero = ds.get("zero_optimization") or {}
    if not isinstance(zero, dict):
        raise BertperfError(f"{path}: zero_optimization must be an object like {{\"stage\": 2}}")
    stage = zero.get("stage", 0)
    if stage not in (0, 1, 2):
        raise BertperfError(f"{path}: zero_optimization.stage is {stage!r}; fine-tuning supports 0, 1 and 2")
    if (ds.get("fp16") or {}).get("enabled", False):
        raise BertperfError(f"{path}: fp16 is not supported on CPU; use \"bf16\": {{\"enabled\": true}}")
    if cfg.bf16:
        ds["bf16"] = {**(ds.get("bf16") or {}), "enabled": True}
    cfg.bf16 = bool((ds.get("bf16") or {}).get("enabled", False))
    if "gradient_clipping" in ds:
        cfg.max_grad_norm = float(ds["gradient_clipping"])
    elif cfg.max_grad_norm > 0:
        ds["gradient_clipping"] = cfg.max_grad_norm
    ds.setdefault("steps_per_print", QUIET_STEPS_PER_PRINT)
    return ds, int(stage)


class DeepSpeedStepper:
    """Steps through a DeepSpeed engine (see `trainer.train`)."""

    def __init__(self, engine: Any, sched: Any, rank: int, world: int, shadow: torch.nn.Module | None):
        self.engine = engine
        self.sched = sched
        self.rank = rank
        self.world = world
        self.shadow = shadow

    @property
    def module(self) -> torch.nn.Module:
        return self.engine.module

    def loss(self, batch: dict[str, torch.Tensor], head: str) -> torch.Tensor:
        loss = head_loss(head, forward_logits(self.engine, _trim(batch), head), batch_with_trimmed_labels(batch, head))
        return loss * 0.0 if "_empty" in batch else loss

    def step(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)
        self.engine.step()  # clipping, optimizer, lr scheduler

    def lr(self) -> float:
        return float(self.sched.get_last_lr()[0])

    def mean_loss(self, loss: torch.Tensor) -> float:
        """The loss averaged over the ranks (the loss of the global batch when shares are equal)."""
        import torch.distributed as dist

        t = loss.detach().float().reshape(1).clone()
        dist.all_reduce(t)
        return float(t) / self.world

    def fp32_state(self) -> dict[str, torch.Tensor]:
        """The full fp32 weights (DeepSpeed's masters where it keeps them). Collective."""
        from deepspeed.utils import safe_get_full_fp32_param

        module = self.engine.module
        state = {k: v.detach().float().clone() for k, v in module.state_dict().items()}
        for name, p in module.named_parameters():
            full = safe_get_full_fp32_param(p)
            if full is not None:
                state[name] = full.detach().float().reshape(p.shape).clone()
        return state

    def best_holder(self) -> torch.nn.Module | None:
        return self.shadow


def run_deepspeed(job: Any, a: argparse.Namespace, cfg: FinetuneConfig, vocab: str, vocab_size: int) -> dict | None:
    """Train `job` under DeepSpeed on every rank; rank 0 scores and writes the outputs and
    returns eval_results, the other ranks return None. The caller must end the process with
    `bertperf.train.engine.end_process_after_distributed_run` (module doc, "Process exit")."""
    from bertperf.finetune.cli import build_model, finish, train_job
    from bertperf.train.engine import barrier, detect_placement, init_distributed, initialize, quiet_deepspeed, \
        set_threads, shutdown_distributed

    if job.train is None:
        raise BertperfError("--deepspeed_config needs training data")
    placement = detect_placement()
    ds, stage = finetune_ds_config(a.deepspeed_config, cfg, placement.world_size)
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    else:
        set_threads(placement)
    quiet_deepspeed()
    init_distributed()
    torch.manual_seed(cfg.seed)
    model = build_model(job.head, a.model, job.num_labels, vocab_size, kernel_backend=cfg.kernel_backend)
    shadow = copy.deepcopy(model) if placement.is_main else None
    total, _ = total_steps(cfg, len(job.train["input_ids"]))
    opt = torch.optim.AdamW(adamw_param_groups(model, cfg.weight_decay, cfg.learning_rate, cfg.head_lr_scale),
                            lr=cfg.learning_rate,
                            betas=(0.9, 0.999), eps=1e-6)
    sched = make_schedule(cfg, total).lr_scheduler(opt)
    engine = initialize(model, opt, sched, ds)
    if placement.is_main:
        log.info("DeepSpeed fine-tuning: %d ranks, ZeRO-%d, %s, global batch %d, %d steps",
                 placement.world_size, stage, "bf16" if cfg.bf16 else "fp32", cfg.batch_size, total)
        os.makedirs(a.output_dir, exist_ok=True)
    barrier()
    stepper = DeepSpeedStepper(engine, sched, placement.rank, placement.world_size, shadow)
    summary = train_job(job, engine.module, cfg, a.output_dir, vocab, stepper=stepper, shard_eval=True)
    barrier()
    out = None
    if placement.is_main:
        results: dict[str, Any] = {"train": summary,
                                   "deepspeed": {"world_size": placement.world_size, "zero_stage": stage,
                                                 "bf16": cfg.bf16, "global_batch": cfg.batch_size}}
        out = finish(job, shadow, cfg, a.output_dir, results)
    shutdown_distributed()  # the other ranks wait here while rank 0 writes the results
    return out
