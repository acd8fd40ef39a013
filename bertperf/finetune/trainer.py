"""A small fine-tuning loop shared by GLUE, SQuAD, NER and TNEWS.

AdamW (decoupled weight decay, none on biases and LayerNorm weights, as BERT's optimizer), lr
linear warmup then linear decay to 0 (`bertperf.optim.schedules.WarmupDecaySchedule`), gradient
clipping by global norm, evaluation every `eval_every` steps (and at the end), the best model
by the task's main metric kept in memory and saved with `save_pretrained` to
`<output_dir>/best` (written to a temporary directory, then swapped in), early stopping after
`patience` evaluations without improvement, a tqdm bar. `bf16` runs the forward passes under
bf16 autocast (CPU AMX GEMMs; weights, optimizer state and losses stay fp32). How a step is
taken is a "stepper": `PlainStepper` here (one process), `bertperf.finetune.ds.DeepSpeedStepper`
under DeepSpeed (ranks share each global batch; evaluation sharded and gathered).

Heads and losses (the losses are computed here from the model's logits):

- "classification": logits [B, C], cross-entropy with `labels` [B];
- "regression": logits [B, 1], mean squared error with float `labels` [B] (STS-B);
- "token": logits [B, S, C], cross-entropy over positions whose `labels` [B, S] are not -100;
- "qa": start/end logits [B, S], (CE(start) + CE(end)) / 2 with `start_positions`,
  `end_positions` [B] (Google's run_squad loss).

Model inputs are the int64 arrays `input_ids`, `segment_ids`, `input_mask` [N, S].
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from bertperf.utils.atomic import atomic_write_json
from bertperf.utils.errors import BertperfError

log = logging.getLogger(__name__)

HEADS = ("classification", "regression", "token", "qa")
INPUT_KEYS = ("input_ids", "segment_ids", "input_mask")
LABEL_KEYS = {"classification": ("labels",), "regression": ("labels",), "token": ("labels",),
              "qa": ("start_positions", "end_positions")}


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------


@dataclass
class FinetuneConfig:
    """Hyper-parameters of one fine-tuning run. Presets: `FinetuneConfig.PRESETS`."""

    learning_rate: float = 2e-5
    batch_size: int = 32
    eval_batch_size: int = 64
    epochs: float = 3.0
    max_steps: int = 0  # > 0: train exactly this many steps (overrides epochs)
    warmup_proportion: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    eval_every: int = 0  # steps between evaluations; 0 = once per epoch
    patience: int = 0  # early stopping after this many evaluations without improvement; 0 = off
    max_seq_length: int = 128
    # SQuAD
    doc_stride: int = 128
    max_query_length: int = 64
    n_best_size: int = 20
    max_answer_length: int = 30
    null_score_diff_threshold: float = 0.0
    seed: int = 42
    log_every: int = 50
    # torch intra-op threads; 0 = torch's default. 1 is often faster for small models, and much
    # faster when other processes share the cores (2 OpenMP threads stall when oversubscribed)
    num_threads: int = 0
    # bf16 autocast on CPU (AMX GEMMs; weights, optimizer and loss stay fp32) in the plain path;
    # under DeepSpeed, bf16 comes from the DeepSpeed JSON (or --bf16) and DeepSpeed keeps fp32 masters
    bf16: bool = False
    # BertConfig.kernel_backend of the model: "auto" (the device's fused kernels), "torch" (eager), "cpu", ...
    kernel_backend: str = "auto"
    # learning rate of the task head and pooler relative to learning_rate (see adamw_param_groups)
    head_lr_scale: float = 1.0

    PRESETS = {
        # Google's run_classifier / README settings (lr 2e-5 as in its MRPC example)
        "glue": {},
        "tnews": {},
        # Google's README for SQuAD v1.1 with BERT-Base
        "squad": {"learning_rate": 3e-5, "batch_size": 12, "epochs": 2.0, "max_seq_length": 384},
        "ner": {"learning_rate": 5e-5},
        # a few hundred steps at most: tiny models and tests
        "demo": {"learning_rate": 1e-3, "batch_size": 8, "eval_batch_size": 32, "epochs": 1.0,
                 "max_seq_length": 64, "warmup_proportion": 0.0, "weight_decay": 0.0, "log_every": 10},
    }

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "FinetuneConfig":
        if name not in cls.PRESETS:
            raise BertperfError(f"unknown fine-tuning preset {name!r}: use one of {', '.join(cls.PRESETS)} "
                                "or a JSON file of FinetuneConfig fields")
        return cls(**{**cls.PRESETS[name], **overrides})

    @classmethod
    def from_json(cls, path: str | os.PathLike, **overrides: Any) -> "FinetuneConfig":
        path = os.fspath(path)
        try:
            with open(path, encoding="utf-8") as f:
                obj = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise BertperfError(f"{path}: cannot read the fine-tuning config ({e}); give a JSON object "
                                "of FinetuneConfig fields") from None
        if not isinstance(obj, dict):
            raise BertperfError(f"{path}: the fine-tuning config must be a JSON object of FinetuneConfig fields")
        preset = obj.pop("preset", None)  # optional: start from a preset, the other fields override it
        names = {f.name for f in dataclasses.fields(cls)}
        if set(obj) - names:
            raise BertperfError(f"{path}: unknown fine-tuning config fields {sorted(set(obj) - names)}; "
                                f"allowed: 'preset' and {sorted(names)}")
        if preset is not None and preset not in cls.PRESETS:
            raise BertperfError(f"{path}: preset {preset!r} is unknown; use one of {', '.join(cls.PRESETS)}")
        return cls(**{**cls.PRESETS.get(preset or "", {}), **obj, **overrides})

    @classmethod
    def resolve(cls, spec: str, **overrides: Any) -> "FinetuneConfig":
        """A preset name or a JSON path."""
        if spec in cls.PRESETS:
            return cls.preset(spec, **overrides)
        if spec.endswith(".json") or os.path.exists(spec):
            return cls.from_json(spec, **overrides)
        return cls.preset(spec, **overrides)  # raises the unknown-preset error


# ---------------------------------------------------------------------------------------------
# Model calls and losses
# ---------------------------------------------------------------------------------------------


def _field(out: Any, *names: str) -> Any:
    for n in names:
        if isinstance(out, dict) and n in out:
            return out[n]
        if hasattr(out, n):
            return getattr(out, n)
    return None


def forward_logits(model: torch.nn.Module, batch: dict[str, torch.Tensor], head: str):
    """Call the model on a batch; return logits (tensor) or (start, end) for "qa"."""
    out = model(input_ids=batch["input_ids"], segment_ids=batch["segment_ids"], input_mask=batch["input_mask"])
    if head == "qa":
        start, end = _field(out, "start_logits"), _field(out, "end_logits")
        if start is None and isinstance(out, (tuple, list)):
            start, end = out[0], out[1]
        return start, end
    logits = out if torch.is_tensor(out) else _field(out, "logits")
    if logits is None and isinstance(out, (tuple, list)):
        logits = out[0]
    return logits


def head_loss(head: str, logits, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The loss of one batch (module doc)."""
    if head == "classification":
        return F.cross_entropy(logits.float(), batch["labels"])
    if head == "regression":
        return F.mse_loss(logits.float().reshape(-1), batch["labels"].float())
    if head == "token":
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1),
                               ignore_index=-100)
    if head == "qa":
        start, end = logits
        return (F.cross_entropy(start.float(), batch["start_positions"]) +
                F.cross_entropy(end.float(), batch["end_positions"])) / 2
    raise ValueError(f"head must be one of {HEADS}, got {head!r}")


def _batches(arrays: dict[str, np.ndarray], keys, batch_size: int, order: np.ndarray):
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        yield {k: torch.from_numpy(np.ascontiguousarray(arrays[k][idx])) for k in keys}


def _trim(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Cut the batch's common right padding (positions where every input_mask is 0)."""
    used = int(batch["input_mask"].any(0).nonzero().max()) + 1 if batch["input_mask"].any() else 1
    S = batch["input_mask"].shape[1]
    if used == S:
        return batch
    return {k: (v[:, :used] if v.dim() == 2 and v.shape[1] == S else v) for k, v in batch.items()}


def _autocast(bf16: bool):
    """bf16 autocast on CPU when `bf16`, else a no-op context."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(bf16))


def _dist_world() -> tuple[int, int]:
    """(rank, world size) of the initialised torch.distributed group, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@torch.no_grad()
def predict(model: torch.nn.Module, arrays: dict[str, np.ndarray], head: str, batch_size: int = 64,
            bf16: bool = False, shard: bool = False):
    """Logits of every row, in order: float32 [N, C] / [N, S, C] / ([N, S], [N, S]) for "qa".
    Batches are trimmed of common right padding, then logits are padded back to [.., S].

    shard: under torch.distributed, each rank predicts a contiguous slice of the rows and the
    slices are gathered, so every rank returns the logits of all N rows (collective: every rank
    must call it). bf16: the forward runs under bf16 autocast (logits returned as float32)."""
    rank, world = _dist_world() if shard else (0, 1)
    if world > 1:
        n = len(arrays["input_ids"])
        lo, hi = (n * rank) // world, (n * (rank + 1)) // world
        part = predict(model, {k: arrays[k][lo:hi] for k in INPUT_KEYS}, head, batch_size, bf16) \
            if hi > lo else None
        import torch.distributed as dist

        parts: list = [None] * world
        dist.all_gather_object(parts, part)
        parts = [p for p in parts if p is not None]
        if head == "qa":
            return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        return np.concatenate(parts)
    was_training = model.training
    model.eval()
    n, S = arrays["input_ids"].shape
    outs: list = []
    try:
        for batch in _batches(arrays, INPUT_KEYS, batch_size, np.arange(n)):
            b = _trim(batch)
            with _autocast(bf16):
                lg = forward_logits(model, b, head)
            if head == "qa":
                pad = S - lg[0].shape[1]
                outs.append(tuple(F.pad(x.float(), (0, pad), value=-1e4).numpy() for x in lg))
            elif head == "token":
                outs.append(F.pad(lg.float(), (0, 0, 0, S - lg.shape[1])).numpy())
            else:
                outs.append(lg.float().numpy())
    finally:
        model.train(was_training)
    if head == "qa":
        return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])
    return np.concatenate(outs)


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def adamw_param_groups(model: torch.nn.Module, weight_decay: float, learning_rate: float | None = None,
                       head_lr_scale: float = 1.0) -> list[dict]:
    """Weight decay on matrices/embeddings, none on biases and LayerNorm (1-D) params. With
    head_lr_scale != 1 (and learning_rate given), the task head and the pooler (parameters
    outside the encoder's embeddings and layers) get their own groups at learning_rate *
    head_lr_scale: a freshly initialised head then learns in the few hundred steps a small
    fine-tuning run has, while the pre-trained encoder moves at the base rate."""
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        head = head_lr_scale != 1.0 and not any(k in name for k in (".embeddings.", ".layers.")) \
            and not name.startswith(("embeddings.", "layers."))
        groups.setdefault((p.dim() < 2 or name.endswith(".bias"), head), []).append(p)
    out = []
    for (no_decay, head), params in sorted(groups.items()):
        g = {"params": params, "weight_decay": 0.0 if no_decay else weight_decay}
        if head and learning_rate is not None:
            g["lr"] = learning_rate * head_lr_scale
        out.append(g)
    return out


def save_model_atomically(model: torch.nn.Module, path: str,
                          save: Callable[[torch.nn.Module, str], None] | None = None) -> None:
    """`save(model, dir)` (default `model.save_pretrained(dir)`) into `path + '.tmp'`, then swap
    it in for `path`."""
    tmp, old = path + ".tmp", path + ".old"
    for d in (tmp, old):
        if os.path.exists(d):
            shutil.rmtree(d)
    if save is None:
        model.save_pretrained(tmp)
    else:
        save(model, tmp)
    if os.path.exists(path):
        os.replace(path, old)
    os.replace(tmp, path)
    if os.path.exists(old):
        shutil.rmtree(old)


@dataclass
class TrainResult:
    steps: int
    best_metric: float
    best_step: int
    history: list[dict] = field(default_factory=list)  # {"step", "loss", metrics...} per evaluation
    stopped_early: bool = False
    seconds: float = 0.0
    train_examples: int = 0


class PlainStepper:
    """One process, plain torch: AdamW (`adamw_param_groups`), the warmup + linear decay
    schedule, clipping by global norm, optional bf16 autocast of the forward pass."""

    rank = 0
    world = 1

    def __init__(self, model: torch.nn.Module, cfg: FinetuneConfig, total_steps: int):
        self.model = model
        self.cfg = cfg
        self.opt = torch.optim.AdamW(adamw_param_groups(model, cfg.weight_decay, cfg.learning_rate, cfg.head_lr_scale),
                                     lr=cfg.learning_rate,
                                     betas=(0.9, 0.999), eps=1e-6)
        self.sched = make_schedule(cfg, total_steps).lr_scheduler(self.opt)

    @property
    def module(self) -> torch.nn.Module:
        """The model to evaluate (its weights are the current ones)."""
        return self.model

    def loss(self, batch: dict[str, torch.Tensor], head: str) -> torch.Tensor:
        with _autocast(self.cfg.bf16):
            return head_loss(head, forward_logits(self.model, _trim(batch), head), batch_with_trimmed_labels(batch, head))

    def step(self, loss: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)
        self.opt.step()
        self.sched.step()

    def lr(self) -> float:
        return float(self.sched.get_last_lr()[0])

    def mean_loss(self, loss: torch.Tensor) -> float:
        """The step's loss as logged (under DeepSpeed: averaged over the ranks)."""
        return float(loss.detach())

    def fp32_state(self) -> dict[str, torch.Tensor]:
        """A detached fp32 copy of the weights."""
        return {k: v.detach().float().clone() for k, v in self.model.state_dict().items()}

    def best_holder(self) -> torch.nn.Module | None:
        """The model that receives the best weights and is saved (None: this rank saves nothing)."""
        return self.model


def make_schedule(cfg: FinetuneConfig, total_steps: int):
    from bertperf.optim.schedules import WarmupDecaySchedule

    return WarmupDecaySchedule(total_steps=total_steps, warmup_steps=int(round(cfg.warmup_proportion * total_steps)),
                               decay="linear")


def total_steps(cfg: FinetuneConfig, n: int) -> tuple[int, int]:
    """(optimizer steps of the run, steps per epoch) for n training rows at cfg.batch_size (global)."""
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = cfg.max_steps if cfg.max_steps > 0 else max(1, int(math.ceil(cfg.epochs * steps_per_epoch)))
    return total, steps_per_epoch


def train(
    model: torch.nn.Module,
    head: str,
    train_arrays: dict[str, np.ndarray],
    cfg: FinetuneConfig,
    evaluate: Callable[[torch.nn.Module], dict[str, float]],
    main_metric: str,
    output_dir: str | None = None,
    save: Callable[[torch.nn.Module, str], None] | None = None,
    stepper: Any = None,
) -> TrainResult:
    """Fine-tune `model` in place; at the end it holds the weights of the best evaluation.

    train_arrays: INPUT_KEYS plus the head's label keys, first dimension N. `evaluate(model)`
    returns metrics containing `main_metric` (higher is better). With `output_dir`, the best
    model is saved to `<output_dir>/best` (by `save(model, dir)`, default `save_pretrained`)
    and the history to `<output_dir>/train_history.json`.

    stepper: how a step is taken; default `PlainStepper` (one process). Under DeepSpeed
    (`bertperf.finetune.ds.DeepSpeedStepper`) every rank calls `train` with the same arrays
    and seed: each global batch of cfg.batch_size rows is split between the ranks, `evaluate`
    is called on every rank (it must be collective or identical everywhere, e.g. a sharded
    `predict`), and the best weights go to `stepper.best_holder()` (a plain fp32 copy on rank
    0, None elsewhere), which rank 0 saves; `model` is then that holder's source and is left as
    the engine trained it.
    """
    from tqdm.auto import tqdm

    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    keys = INPUT_KEYS + LABEL_KEYS[head]
    missing = [k for k in keys if k not in train_arrays]
    if missing:
        raise ValueError(f"training arrays lack {missing}")
    n = len(train_arrays["input_ids"])
    if n == 0:
        raise BertperfError("the training set is empty: check the training file")
    total, steps_per_epoch = total_steps(cfg, n)
    eval_every = cfg.eval_every if cfg.eval_every > 0 else steps_per_epoch
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    if stepper is None:
        stepper = PlainStepper(model, cfg, total)
    rank, world = stepper.rank, stepper.world
    main = rank == 0

    result = TrainResult(steps=0, best_metric=-math.inf, best_step=0, train_examples=n)
    best_state = None
    bad_evals = 0
    t0 = time.perf_counter()
    stepper.module.train()
    bar = tqdm(total=total, desc="fine-tune", unit="step", dynamic_ncols=True, mininterval=1.0, disable=not main)
    losses: list[float] = []
    step = 0
    while step < total and not result.stopped_early:
        order = rng.permutation(n)
        for batch in _batches(train_arrays, keys, cfg.batch_size, order):
            if world > 1:
                batch = _rank_share(batch, rank, world)
            loss = stepper.loss(batch, head)
            stepper.step(loss)
            step += 1
            losses.append(stepper.mean_loss(loss))
            bar.update(1)
            if step % max(1, cfg.log_every) == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-cfg.log_every:]):.4f}", lr=f"{stepper.lr():.2e}")
            if step % eval_every == 0 or step == total:
                metrics = evaluate(stepper.module)
                stepper.module.train()
                if main_metric not in metrics:
                    raise ValueError(f"evaluation returned {sorted(metrics)}, not the main metric {main_metric!r}")
                entry = {"step": step, "train_loss": float(np.mean(losses[-eval_every:])), **metrics}
                result.history.append(entry)
                value = float(metrics[main_metric])
                if main:
                    log.info("step %d: %s", step,
                             {k: round(v, 4) if isinstance(v, float) else v for k, v in entry.items()})
                if value > result.best_metric:
                    result.best_metric, result.best_step, bad_evals = value, step, 0
                    best_state = stepper.fp32_state()  # collective under DeepSpeed
                    holder = stepper.best_holder()
                    if output_dir and holder is not None:
                        if holder is not model:
                            holder.load_state_dict(best_state)
                        save_model_atomically(holder, os.path.join(output_dir, "best"), save)
                else:
                    bad_evals += 1
                    if cfg.patience > 0 and bad_evals >= cfg.patience:
                        if main:
                            log.info("early stopping at step %d: no better %s for %d evaluations", step,
                                     main_metric, bad_evals)
                        result.stopped_early = True
                if output_dir and main:
                    atomic_write_json(os.path.join(output_dir, "train_history.json"), result.history)
            if step >= total or result.stopped_early:
                break
    bar.close()
    result.steps = step
    result.seconds = time.perf_counter() - t0
    holder = stepper.best_holder()
    if best_state is not None and holder is not None:
        holder.load_state_dict(best_state)
    return result


def _rank_share(batch: dict[str, torch.Tensor], rank: int, world: int) -> dict[str, torch.Tensor]:
    """This rank's contiguous share of a global batch (sizes differ by at most one row). A rank
    left with no row gets the batch's first row (its loss is then multiplied by 0 by the
    stepper, see `DeepSpeedStepper`): every rank must run forward and backward each step."""
    n = len(batch["input_ids"])
    lo, hi = (n * rank) // world, (n * (rank + 1)) // world
    if hi <= lo:
        return {k: v[:1] for k, v in batch.items()} | {"_empty": torch.ones(())}
    return {k: v[lo:hi] for k, v in batch.items()}


def batch_with_trimmed_labels(batch: dict[str, torch.Tensor], head: str) -> dict[str, torch.Tensor]:
    """Token labels [B, S] cut to the trimmed length of the batch's inputs (other heads: as is)."""
    if head != "token":
        return batch
    return _trim(batch)
