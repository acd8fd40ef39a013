"""Training metrics: accumulation over a logging window, reduction over ranks, and the three sinks
(console line, `metrics.csv`, TensorBoard event files).

One row per logged step, averaged over the window since the previous row and over all ranks:

    step        optimizer steps done            epoch, samples   data position (global samples)
    loss        mean of mlm_loss + nsp_loss     mlm_loss, nsp_loss  its two parts
    mlm_acc     correct / predicted masked tokens (all ranks)
    nsp_acc     correct / sequences for next-sentence prediction
    lr          learning rate of the first param group at the end of the window
    seq_per_s   global sequences per second over the window (all ranks together)
    tflops      achieved TFLOP/s: seq_per_s x `bertperf.report.flops.pretrain_flops_per_sequence`
                at the window's mean number of masked tokens per sequence
    elapsed_s   wall-clock seconds since the start of this run (not counting earlier runs)
    skipped     optimizer steps skipped so far for a NaN/Inf loss (all runs of this training)

Micro-batches whose loss is NaN or Inf are left out of the window's averages; a window made only
of such micro-batches reports loss, mlm_loss and nsp_loss as NaN.
"""
from __future__ import annotations

import csv
import logging
import math
import os
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass
class MetricsRow:
    """One logged step; see the module docstring for the meaning of each field."""

    step: int
    epoch: int
    samples: int
    loss: float
    mlm_loss: float
    nsp_loss: float
    mlm_acc: float
    nsp_acc: float
    lr: float
    seq_per_s: float
    tflops: float
    elapsed_s: float
    skipped: int = 0

    def console(self, max_steps: int) -> str:
        return (f"step {self.step}/{max_steps} | loss {self.loss:.4f} (mlm {self.mlm_loss:.4f}, nsp {self.nsp_loss:.4f})"
                f" | mlm_acc {self.mlm_acc:.4f} | nsp_acc {self.nsp_acc:.4f} | lr {self.lr:.3e}"
                f" | {self.seq_per_s:.1f} seq/s | {self.tflops:.4f} TFLOP/s"
                + (f" | {self.skipped} skipped" if self.skipped else ""))


CSV_FIELDS = [f.name for f in fields(MetricsRow)]

# index of each sum in the window's accumulator
_KEYS = ("loss", "mlm_loss", "nsp_loss", "micro_steps", "mlm_correct", "mlm_count", "nsp_correct", "sequences",
         "bad_micro_steps")


class MetricsWindow:
    """Sums of one logging window on this rank; `reduce()` adds them over all ranks.

    `add(output, batch_size)` takes a `PreTrainingOutput` (loss, mlm_loss, nsp_loss, mlm_correct,
    mlm_count, nsp_correct) of one micro-batch. A micro-batch with a non-finite loss only counts
    in `bad_micro_steps` (and its sequences in `sequences`).
    """

    def __init__(self) -> None:
        self.sums = torch.zeros(len(_KEYS), dtype=torch.float64)

    def add(self, output: Any, batch_size: int) -> None:
        if not math.isfinite(float(output.loss.detach())):
            self.sums[_KEYS.index("bad_micro_steps")] += 1
            self.sums[_KEYS.index("sequences")] += batch_size
            return
        values = (output.loss, output.mlm_loss, output.nsp_loss, 1, output.mlm_correct, output.mlm_count,
                  output.nsp_correct, batch_size, 0)
        self.sums += torch.tensor([float(v.detach()) if torch.is_tensor(v) else float(v) for v in values],
                                  dtype=torch.float64)

    def reduce(self) -> dict[str, float]:
        """Sums over all ranks (an all-reduce when torch.distributed is initialized), then reset."""
        sums = self.sums.clone()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(sums)
        self.sums.zero_()
        return dict(zip(_KEYS, sums.tolist()))


def window_row(sums: dict[str, float], *, step: int, epoch: int, samples: int, lr: float, seconds: float,
               flops_per_masked: Callable[[float], float], elapsed: float, skipped: int = 0) -> MetricsRow:
    """A MetricsRow from reduced window sums; `flops_per_masked(m)` gives FLOPs per sequence at m masked tokens;
    `skipped` is the running count of skipped steps."""
    micro = sums["micro_steps"] or (math.nan if sums.get("bad_micro_steps") else 1.0)
    seqs = sums["sequences"]
    seq_per_s = seqs / seconds if seconds > 0 else 0.0
    masked_per_seq = sums["mlm_count"] / seqs if seqs else 0.0
    return MetricsRow(
        step=step, epoch=epoch, samples=samples,
        loss=sums["loss"] / micro, mlm_loss=sums["mlm_loss"] / micro, nsp_loss=sums["nsp_loss"] / micro,
        mlm_acc=sums["mlm_correct"] / sums["mlm_count"] if sums["mlm_count"] else 0.0,
        nsp_acc=sums["nsp_correct"] / seqs if seqs else 0.0,
        lr=lr, seq_per_s=seq_per_s, tflops=flops_per_masked(masked_per_seq) * seq_per_s / 1e12,
        elapsed_s=elapsed, skipped=skipped)


class MetricsSinks:
    """Console, CSV and TensorBoard output; only rank 0 writes (others get a no-op instance).

    On resume (`resume_step` given) the CSV keeps its rows up to `resume_step` and TensorBoard
    purges later events, so a run that crashed after its last checkpoint leaves no stale rows.
    """

    def __init__(self, output_dir: str, enabled: bool, max_steps: int, resume_step: int | None = None) -> None:
        self.enabled = enabled
        self.max_steps = max_steps
        self.csv_path = os.path.join(output_dir, "metrics.csv")
        self.tb_dir = os.path.join(output_dir, "tensorboard")
        self._writer = None
        if not enabled:
            return
        kept: list[dict[str, str]] = []
        if resume_step is not None and os.path.isfile(self.csv_path):
            with open(self.csv_path, newline="") as f:
                kept = [r for r in csv.DictReader(f) if r.get("step", "").isdigit() and int(r["step"]) <= resume_step]
        tmp = self.csv_path + ".tmp"
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
            w.writeheader()
            w.writerows(kept)
        os.replace(tmp, self.csv_path)
        from torch.utils.tensorboard import SummaryWriter

        purge = None if resume_step is None else resume_step + 1
        self._writer = SummaryWriter(self.tb_dir, purge_step=purge)

    def write(self, row: MetricsRow) -> None:
        if not self.enabled:
            return
        log.info(row.console(self.max_steps))
        with open(self.csv_path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=CSV_FIELDS).writerow(asdict(row))
        for name, value in asdict(row).items():
            if name not in ("step", "samples", "elapsed_s"):
                self._writer.add_scalar(f"train/{name}", value, row.step)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def throughput(seqs_after_first: float, t_after_first: float, steps: int, global_batch: int,
               t_start: float, t_end: float) -> float:
    """Global sequences/s from the end of the first step (which pays for lazy initialization) to the
    end of training; over the whole run when it had a single step."""
    if seqs_after_first:
        return seqs_after_first / (t_end - t_after_first)
    return steps * global_batch / (t_end - t_start)


def run_summary(*, first_step: int, step: int, samples: int, seconds: float, seq_per_s: float,
                flops_per_sequence: float, first_row: MetricsRow | None, last_row: MetricsRow | None,
                paths: dict[str, str], **settings: Any) -> dict[str, Any]:
    """The content of summary.json: steps, throughput, first/last logged loss and accuracies,
    `paths`, then the run's `settings` (world size, ZeRO stage, ...) as given."""
    return {
        "steps": [first_step, step], "samples": samples, "train_seconds": round(seconds, 2),
        "seq_per_s": round(seq_per_s, 2), "tflops": round(flops_per_sequence * seq_per_s / 1e12, 5),
        "flops_per_sequence": flops_per_sequence,
        "loss_first": first_row.loss if first_row else None, "loss_last": last_row.loss if last_row else None,
        "mlm_acc_last": last_row.mlm_acc if last_row else None, "nsp_acc_last": last_row.nsp_acc if last_row else None,
        **settings, "paths": paths,
    }


def write_summary(output_dir: str, summary: dict[str, Any]) -> None:
    """summary.json in `output_dir`, written atomically."""
    from bertperf.utils.atomic import atomic_write_json

    atomic_write_json(os.path.join(output_dir, "summary.json"), summary, indent=2)
