"""Reading a DeepSpeed JSON: what goes to DeepSpeed as it is, and what bertperf takes over.

Taken over (removed from the dict given to `deepspeed.initialize`):
- "optimizer": built by bertperf as a client torch optimizer (`bertperf.train.optimizers`), since
  DeepSpeed's Lamb/FusedAdam do not run on CPU. Missing -> AdamW(lr 1e-4, weight_decay 0.01).
- "scheduler" of a bertperf type (WarmupPolyDecay, WarmupLinearDecay, WarmupConstant;
  `bertperf.optim.schedules`). DeepSpeed's own scheduler types stay in the dict for DeepSpeed.
Completed (written into the dict so DeepSpeed and the data loader agree):
- train_micro_batch_size_per_gpu, gradient_accumulation_steps, train_batch_size: resolved for
  the run's world size with DeepSpeed's rules, checked for consistency.
- zero_allow_untested_optimizer: set to true when the optimizer is bertperf's Lamb under ZeRO
  (made exact under ZeRO-1/2 by `bertperf.optim.zero_lamb`; Lamb with ZeRO-3 is refused here).
- steps_per_print: defaults to a large value (bertperf logs itself).
Everything else (zero_optimization, bf16, gradient_clipping, ...) goes to DeepSpeed unchanged.
"""
from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from typing import Any

from bertperf.optim.schedules import SCHEDULER_TYPES, WarmupDecaySchedule
from bertperf.train.optimizers import DEFAULT_OPTIMIZER, optimizer_entry
from bertperf.utils.errors import BertperfError

QUIET_STEPS_PER_PRINT = 10**9
# DeepSpeed 0.19's own scheduler types (deepspeed.runtime.lr_schedules.VALID_LR_SCHEDULES): left to DeepSpeed
DEEPSPEED_SCHEDULERS = ("LRRangeTest", "OneCycle", "WarmupLR", "WarmupDecayLR", "WarmupCosineLR")


@dataclass
class TrainSetup:
    """A parsed DeepSpeed JSON for one run.

    `ds_config` is the dict for `deepspeed.initialize(config=...)`; `optimizer` the JSON's
    optimizer section (built by bertperf); `schedule` the taken-over lr schedule or None.
    """

    path: str
    ds_config: dict[str, Any]
    optimizer: dict[str, Any]
    schedule: WarmupDecaySchedule | None
    micro_batch: int
    grad_accum: int
    world_size: int
    zero_stage: int
    bf16: bool

    @property
    def global_batch(self) -> int:
        """Sequences per optimizer step over all ranks."""
        return self.micro_batch * self.grad_accum * self.world_size


def read_json(path: str) -> dict[str, Any]:
    """Parse a JSON object from `path`; missing file or bad JSON -> BertperfError naming the file."""
    if not os.path.isfile(path):
        raise BertperfError(f"{path}: DeepSpeed config file not found")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise BertperfError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise BertperfError(f"{path}: cannot read ({e})") from None
    if not isinstance(data, dict):
        raise BertperfError(f"{path}: expected a JSON object with DeepSpeed settings, got {type(data).__name__}")
    return data


def _positive_int(cfg: dict[str, Any], key: str, where: str) -> int | None:
    value = cfg.get(key)
    if value is None or value == "auto":
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BertperfError(f"{where}: {key} must be a positive integer, got {value!r}")
    return value


def resolve_batch(cfg: dict[str, Any], world_size: int, where: str) -> tuple[int, int, int]:
    """(micro, accumulation, global) batch sizes from the JSON, with DeepSpeed's rules.

    Any two of train_batch_size, train_micro_batch_size_per_gpu, gradient_accumulation_steps
    determine the third (accumulation defaults to 1); all three must satisfy
    global = micro * accumulation * world_size.
    """
    total = _positive_int(cfg, "train_batch_size", where)
    micro = _positive_int(cfg, "train_micro_batch_size_per_gpu", where)
    accum = _positive_int(cfg, "gradient_accumulation_steps", where)
    if micro is None and total is None:
        raise BertperfError(f"{where}: set train_micro_batch_size_per_gpu (or train_batch_size)")
    if micro is None:
        accum = accum or 1
        if total % (accum * world_size):
            raise BertperfError(f"{where}: train_batch_size {total} is not divisible by gradient_accumulation_steps "
                                f"{accum} x {world_size} ranks")
        micro = total // (accum * world_size)
    elif accum is None:
        if total is None:
            accum = 1
        elif total % (micro * world_size):
            raise BertperfError(f"{where}: train_batch_size {total} is not divisible by train_micro_batch_size_per_gpu "
                                f"{micro} x {world_size} ranks")
        else:
            accum = total // (micro * world_size)
    expected = micro * accum * world_size
    if total is not None and total != expected:
        raise BertperfError(f"{where}: train_batch_size {total} != train_micro_batch_size_per_gpu {micro} x "
                            f"gradient_accumulation_steps {accum} x {world_size} ranks = {expected}")
    return micro, accum, expected


def load_train_setup(path: str, world_size: int, max_steps: int, fp16_supported: bool = False) -> TrainSetup:
    """Read the DeepSpeed JSON at `path` for a run of `world_size` ranks and `max_steps` steps."""
    raw = read_json(path)
    cfg = copy.deepcopy(raw)

    optimizer = cfg.pop("optimizer", None) or copy.deepcopy(DEFAULT_OPTIMIZER)
    if not isinstance(optimizer, dict):
        raise BertperfError(f"{path}: optimizer must be an object {{\"type\": ..., \"params\": {{...}}}}")
    entry = optimizer_entry(optimizer, path)

    schedule = None
    section = cfg.get("scheduler")
    if section is not None:
        kind = section.get("type") if isinstance(section, dict) else None
        if kind in SCHEDULER_TYPES:
            schedule = WarmupDecaySchedule.from_section(cfg.pop("scheduler"), max_steps, where=path)
        elif kind not in DEEPSPEED_SCHEDULERS:
            raise BertperfError(f"{path}: scheduler.type {kind!r} is unknown; use one of bertperf's "
                                f"{sorted(SCHEDULER_TYPES)} or DeepSpeed's {list(DEEPSPEED_SCHEDULERS)}")

    micro, accum, total = resolve_batch(cfg, world_size, path)
    cfg.update(train_micro_batch_size_per_gpu=micro, gradient_accumulation_steps=accum, train_batch_size=total)

    zero = cfg.get("zero_optimization") or {}
    if not isinstance(zero, dict):
        raise BertperfError(f"{path}: zero_optimization must be an object like {{\"stage\": 2}}")
    stage = zero.get("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise BertperfError(f"{path}: zero_optimization.stage must be 0, 1, 2 or 3, got {stage!r}")
    if stage not in entry.zero_stages:
        raise BertperfError(f"{path}: optimizer.type {optimizer.get('type')!r} is not supported under "
                            f"zero_optimization.stage {stage} (its per-tensor trust ratios would be taken on "
                            f"partition slices); use stage {max(entry.zero_stages)} or AdamW")
    bf16 = bool((cfg.get("bf16") or cfg.get("bfloat16") or {}).get("enabled", False))
    if (cfg.get("fp16") or {}).get("enabled", False) and not fp16_supported:
        raise BertperfError(f"{path}: fp16 is not supported on this device (CPU); use \"bf16\": {{\"enabled\": true}}")
    if entry.zero_untested and stage > 0:
        cfg.setdefault("zero_allow_untested_optimizer", True)
    cfg.setdefault("steps_per_print", QUIET_STEPS_PER_PRINT)
    return TrainSetup(path=path, ds_config=cfg, optimizer=optimizer, schedule=schedule, micro_batch=micro,
                      grad_accum=accum, world_size=world_size, zero_stage=int(stage), bf16=bf16)
