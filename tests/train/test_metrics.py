"""Metric rows from window sums, and the CSV sink's behaviour on resume."""
from __future__ import annotations

import csv
from types import SimpleNamespace

import pytest
import torch

from bertperf.train.metrics import CSV_FIELDS, MetricsRow, MetricsSinks, MetricsWindow, window_row


def out(loss, mlm, nsp, mlm_correct, mlm_count, nsp_correct):
    t = torch.tensor
    return SimpleNamespace(loss=t(loss, requires_grad=True), mlm_loss=t(mlm), nsp_loss=t(nsp),
                           mlm_correct=t(mlm_correct), mlm_count=t(mlm_count), nsp_correct=t(nsp_correct))


def test_window_row_from_sums():
    w = MetricsWindow()
    w.add(out(3.0, 2.5, 0.5, 4, 10, 3), batch_size=4)
    w.add(out(2.0, 1.5, 0.5, 6, 30, 1), batch_size=4)
    sums = w.reduce()  # one process: the local sums
    assert w.sums.abs().sum() == 0  # reset after reduce
    row = window_row(sums, step=7, epoch=0, samples=56, lr=1e-3, seconds=2.0,
                     flops_per_masked=lambda m: 1e12 * m, elapsed=9.0)
    assert (row.loss, row.mlm_loss, row.nsp_loss) == (2.5, 2.0, 0.5)
    assert row.mlm_acc == 10 / 40 and row.nsp_acc == 4 / 8
    assert row.seq_per_s == 4.0  # 8 sequences in 2 s
    assert row.tflops == pytest.approx(5.0 * 4.0)  # 40 masked / 8 sequences = 5 per sequence -> 5 TFLOP each


def row(step: int) -> MetricsRow:
    return MetricsRow(step=step, epoch=0, samples=8 * step, loss=10.0 - step, mlm_loss=9.0, nsp_loss=0.7,
                      mlm_acc=0.1, nsp_acc=0.5, lr=1e-3, seq_per_s=50.0, tflops=0.01, elapsed_s=float(step))


def read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_csv_resume_keeps_rows_up_to_the_checkpoint(tmp_path):
    sinks = MetricsSinks(str(tmp_path), enabled=True, max_steps=10)
    for s in range(1, 6):
        sinks.write(row(s))
    sinks.close()
    rows = read(tmp_path / "metrics.csv")
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5] and list(rows[0]) == CSV_FIELDS
    # the run crashed after step 5 with its last checkpoint at step 3: steps 4, 5 are redone
    sinks = MetricsSinks(str(tmp_path), enabled=True, max_steps=10, resume_step=3)
    sinks.write(row(4))
    sinks.close()
    assert [int(r["step"]) for r in read(tmp_path / "metrics.csv")] == [1, 2, 3, 4]
    # a fresh run starts a new file
    MetricsSinks(str(tmp_path), enabled=True, max_steps=10).close()
    assert read(tmp_path / "metrics.csv") == []
    assert any((tmp_path / "tensorboard").iterdir())


def test_disabled_sinks_write_nothing(tmp_path):
    sinks = MetricsSinks(str(tmp_path), enabled=False, max_steps=3)
    sinks.write(row(1))
    sinks.close()
    assert list(tmp_path.iterdir()) == []
