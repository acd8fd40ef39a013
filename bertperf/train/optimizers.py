"""The "optimizer" section of a DeepSpeed JSON, built as a client torch optimizer.

DeepSpeed's own optimizers need compiled ops that do not run on CPU (Lamb, FusedAdam), so
bertperf builds the optimizer itself and hands it to `deepspeed.initialize(optimizer=...)`.
`OPTIMIZERS` maps the JSON's ``type`` (case-insensitive) to a builder; ``params`` are passed as
keyword arguments (``lr``, ``betas``, ``eps``, ``weight_decay``, ...). DeepSpeed-only switches
that change nothing here (``torch_adam``, ``fused``) are accepted and ignored.

Parameter groups follow BERT's recipe: biases and LayerNorm parameters get no weight decay
(`bertperf.optim.lamb.lamb_param_groups`).

Lamb under ZeRO: DeepSpeed hands the optimizer flat partitions, so `bertperf.train.engine.initialize`
calls `bertperf.optim.zero_lamb.attach_zero_lamb`, which makes its per-tensor trust ratios exact
under ZeRO-1/2. ZeRO-3 is not supported with Lamb (`OptimizerEntry.zero_stages`), and a JSON that
asks for it is refused before training starts.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import nn

from bertperf.utils.errors import BertperfError

IGNORED_PARAMS = frozenset({"torch_adam", "fused"})
DEFAULT_OPTIMIZER: dict[str, Any] = {"type": "AdamW", "params": {"lr": 1e-4, "weight_decay": 0.01}}


def _lamb_class() -> type[torch.optim.Optimizer]:
    from bertperf.optim.lamb import Lamb

    return Lamb


@dataclass(frozen=True)
class OptimizerEntry:
    """How to build one optimizer type: its class (lazily), and what a ZeRO run must be told."""

    cls: Callable[[], type[torch.optim.Optimizer]]
    # DeepSpeed refuses client optimizers it does not know under ZeRO unless this is set
    zero_untested: bool = False
    # param-group keys only this optimizer understands (others get them removed)
    group_keys: frozenset[str] = field(default_factory=frozenset)
    # the ZeRO stages under which it computes what it computes without ZeRO
    zero_stages: tuple[int, ...] = (0, 1, 2, 3)


OPTIMIZERS: dict[str, OptimizerEntry] = {
    "adamw": OptimizerEntry(cls=lambda: torch.optim.AdamW),
    "adam": OptimizerEntry(cls=lambda: torch.optim.AdamW),
    "lamb": OptimizerEntry(cls=_lamb_class, zero_untested=True, group_keys=frozenset({"layer_adaptation"}),
                           zero_stages=(0, 1, 2)),
}


def optimizer_entry(section: Mapping[str, Any], where: str) -> OptimizerEntry:
    """The table entry for a JSON "optimizer" section; unknown type -> BertperfError naming `where`."""
    kind = str(section.get("type", "")).lower()
    if kind not in OPTIMIZERS:
        raise BertperfError(f"{where}: optimizer.type {section.get('type')!r} is not supported; "
                            f"use one of {sorted(OPTIMIZERS)} (bertperf builds the optimizer itself)")
    return OPTIMIZERS[kind]


def param_groups(model: nn.Module, weight_decay: float, keep_keys: frozenset[str]) -> list[dict[str, Any]]:
    """BERT's two groups: decayed weights, and biases/LayerNorm without decay."""
    from bertperf.optim.lamb import lamb_param_groups

    groups = lamb_param_groups(model, weight_decay)
    return [{k: v for k, v in g.items() if k in keep_keys or k in ("params", "weight_decay")} for g in groups]


def build_optimizer(model: nn.Module, section: Mapping[str, Any], where: str) -> torch.optim.Optimizer:
    """A torch optimizer for `model` from a JSON "optimizer" section {"type": ..., "params": {...}}.

    Params the optimizer class does not accept -> BertperfError naming `where` and the field.
    `betas` given as a JSON list become a tuple.
    """
    entry = optimizer_entry(section, where)
    cls = entry.cls()
    params = {k: v for k, v in dict(section.get("params") or {}).items() if k not in IGNORED_PARAMS}
    if str(section.get("type", "")).lower() == "adam":
        # DeepSpeed's "Adam" is AdamW unless adam_w_mode is false (then Adam with L2 decay)
        if params.pop("adam_w_mode", True) is False:
            cls = torch.optim.Adam
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "params"}
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise BertperfError(f"{where}: optimizer.params {unknown} are not accepted by {cls.__name__}; "
                            f"allowed: {sorted(accepted)}")
    if "betas" in params:
        params["betas"] = tuple(params["betas"])
    weight_decay = float(params.get("weight_decay", 0.0))
    groups = param_groups(model, weight_decay, entry.group_keys)
    try:
        return cls(groups, **params)
    except (TypeError, ValueError) as e:
        raise BertperfError(f"{where}: optimizer.params are invalid for {cls.__name__}: {e}") from None
