"""Learning-rate schedules for pre-training: linear warmup, then linear or polynomial decay.

The schedule is a multiplier of the optimizer's base learning rate, as a function of the number
of optimizer steps already taken, ``s = 0, 1, 2, ...`` (the lr used by step ``s + 1``; this is
``LambdaLR``'s ``last_epoch``). With ``W`` warmup steps and ``T`` total steps:

    warmup  (s < W):   f(s) = (s + 1) / W                  (reaches 1 at the W-th step)
    decay   (s >= W):  p = min(1, (s - W) / (T - W))        (0 at the end of warmup, 1 at T)
                       linear:   f(s) = 1 - p
                       poly:     f(s) = (1 - p) ** power    (NVIDIA's BERT recipe: power 0.5)
                       constant: f(s) = 1

Compared with NVIDIA DeepLearningExamples' `PolyWarmUpScheduler` (which uses
``(1 - s/T) ** 0.5`` after warmup, a small jump down at ``s = W``, and lr 0 on the very first step),
this decay starts exactly where the warmup ends and never spends a step at lr 0; the shape and
the recipe's hyperparameters (warmup proportion 0.2843 in phase 1, 0.128 in phase 2, power 0.5)
are otherwise the same.

In a DeepSpeed JSON the schedule is written as a "scheduler" section that bertperf takes over
(DeepSpeed's own scheduler types are left to DeepSpeed)::

    "scheduler": {"type": "WarmupPolyDecay",
                  "params": {"warmup_proportion": 0.2843, "degree": 0.5, "total_num_steps": 7038}}

``type`` is ``WarmupPolyDecay``, ``WarmupLinearDecay`` or ``WarmupConstant``; ``params`` may hold
``warmup_num_steps`` or ``warmup_proportion`` (of the total), ``total_num_steps`` (default: the
run's ``--max_steps``) and, for poly, ``degree`` (default 0.5). A warmup longer than the total is
shortened to the total (with a warning), so short trial runs of a long recipe still start.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from bertperf.utils.errors import BertperfError

log = logging.getLogger(__name__)

DECAYS = ("linear", "poly", "constant")

# "scheduler" types of a DeepSpeed JSON that bertperf builds itself -> decay kind
SCHEDULER_TYPES: dict[str, str] = {
    "WarmupPolyDecay": "poly",
    "WarmupLinearDecay": "linear",
    "WarmupConstant": "constant",
}
_PARAMS = {"warmup_num_steps", "warmup_proportion", "total_num_steps", "degree"}


@dataclass(frozen=True)
class WarmupDecaySchedule:
    """Linear warmup over `warmup_steps`, then `decay` ("linear", "poly", "constant") to `total_steps`.

    `factor(s)` is the lr multiplier for the step after `s` completed steps (see the module
    docstring for the formula); it is 1.0 at the end of warmup and falls towards 0 at `total_steps`.
    After `total_steps` it stays at the final value (0 for linear/poly).
    """

    total_steps: int
    warmup_steps: int = 0
    decay: str = "poly"
    power: float = 0.5

    def __post_init__(self) -> None:
        if self.decay not in DECAYS:
            raise BertperfError(f"lr schedule: decay {self.decay!r} is unknown; use one of {DECAYS}")
        if self.total_steps < 1:
            raise BertperfError(f"lr schedule: total_steps must be >= 1, got {self.total_steps}")
        if not 0 <= self.warmup_steps <= self.total_steps:
            raise BertperfError(f"lr schedule: warmup_steps must be in [0, total_steps={self.total_steps}], "
                                f"got {self.warmup_steps}")
        if not (self.power > 0 and math.isfinite(self.power)):
            raise BertperfError(f"lr schedule: power must be > 0, got {self.power}")

    def factor(self, step: int) -> float:
        """The lr multiplier after `step` completed optimizer steps (step >= 0)."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.decay == "constant":
            return 1.0
        span = self.total_steps - self.warmup_steps
        progress = 1.0 if span <= 0 else min(1.0, (step - self.warmup_steps) / span)
        if self.decay == "linear":
            return 1.0 - progress
        return (1.0 - progress) ** self.power

    @classmethod
    def from_section(cls, section: Mapping[str, Any], default_total_steps: int,
                     where: str = "scheduler") -> "WarmupDecaySchedule":
        """Build from a JSON "scheduler" section {"type": ..., "params": {...}} (see module docstring).

        `where` names the file in error messages. Raises BertperfError on an unknown type or param.
        """
        kind = section.get("type")
        if kind not in SCHEDULER_TYPES:
            raise BertperfError(f"{where}: scheduler.type {kind!r} is not one of bertperf's "
                                f"{sorted(SCHEDULER_TYPES)}")
        params = dict(section.get("params") or {})
        unknown = sorted(set(params) - _PARAMS)
        if unknown:
            raise BertperfError(f"{where}: scheduler.params {unknown} are not understood by {kind}; "
                                f"allowed: {sorted(_PARAMS)}")
        try:
            total = int(params.get("total_num_steps", default_total_steps))
            if "warmup_num_steps" in params and "warmup_proportion" in params:
                raise BertperfError(f"{where}: give scheduler.params.warmup_num_steps or warmup_proportion, not both")
            if "warmup_proportion" in params:
                proportion = float(params["warmup_proportion"])
                if not 0 <= proportion <= 1:
                    raise BertperfError(f"{where}: scheduler.params.warmup_proportion must be in [0, 1], "
                                        f"got {proportion}")
                warmup = int(round(proportion * total))
            else:
                warmup = int(params.get("warmup_num_steps", 0))
            power = float(params.get("degree", 0.5))
            if warmup > total >= 1:
                log.warning("%s: scheduler warmup of %d steps exceeds the %d total steps; warming up over all of them",
                            where, warmup, total)
                warmup = total
        except (TypeError, ValueError) as e:
            raise BertperfError(f"{where}: scheduler.params has a value of the wrong type ({e})") from None
        try:
            return cls(total_steps=total, warmup_steps=warmup, decay=SCHEDULER_TYPES[kind], power=power)
        except BertperfError as e:
            raise BertperfError(f"{where}: scheduler: {e}") from None

    def lr_scheduler(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        """A `LambdaLR` applying `factor` to every param group's base lr.

        The multiplier is a plain function, so the scheduler's state_dict holds only the step count:
        resuming restores the position, while the schedule itself comes from the current config.
        """
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: self.factor(step))
