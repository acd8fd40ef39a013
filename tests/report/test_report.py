"""`bertperf report`: tables computed from the inputs, valid PNG plots, a self-contained HTML page
that headless Chromium renders with every plot decoded, the GPU projection against the FLOP
formula and the published anchors, and clear errors for bad inputs."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest

from bertperf.model.config import BertConfig
from bertperf.report import projection
from bertperf.report.machine import machine_info, write_bench_json
from bertperf.report.report import main, write_report
from bertperf.train.metrics import CSV_FIELDS
from bertperf.utils.errors import BertperfError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_run(root, name: str, world: int, seq_per_s: float, losses: list[float]) -> str:
    """A pretrain output directory with metrics.csv (as MetricsSinks writes it) and summary.json."""
    d = os.path.join(root, name)
    os.makedirs(d)
    with open(os.path.join(d, "metrics.csv"), "w", encoding="utf-8") as f:
        f.write(",".join(CSV_FIELDS) + "\n")
        for i, loss in enumerate(losses, start=1):
            row = {k: 0 for k in CSV_FIELDS}
            row.update(step=i * 10, loss=loss, seq_per_s=seq_per_s + i, elapsed_s=float(i))
            f.write(",".join(str(row[k]) for k in CSV_FIELDS) + "\n")
    summary = {"model_config": "tiny", "world_size": world, "threads_per_rank": 1, "zero_stage": 2, "bf16": False,
               "seq_length": 128, "global_batch": 32, "seq_per_s": seq_per_s, "tflops": 0.01}
    with open(os.path.join(d, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f)
    return d


@pytest.fixture
def inputs(tmp_path):
    r1 = write_run(tmp_path, "tiny-1rank", 1, 20.0, [10.5, 9.0, 8.25])
    r2 = write_run(tmp_path, "tiny-2rank", 2, 36.0, [10.5, 8.9, 8.0])
    bench_dir = tmp_path / "bench"
    write_bench_json(bench_dir / "kernels.json", "kernels", "fused kernels", [
        {"op": "layer_norm", "shape": "8x128x768", "dtype": "fp32", "threads": 1, "pass": "fwd+bwd", "x_eager": 1.64},
        {"op": "bias_gelu", "shape": "8x128x3072", "dtype": "fp32", "threads": 1, "pass": "fwd+bwd", "x_eager": 1.54},
    ])
    write_bench_json(bench_dir / "zero.json", "zero_memory", "memory per ZeRO stage", [
        {"stage": s, "params_mb": 440.0 / (2 if s == 3 else 1), "grads_mb": 440.0 / (1 if s < 2 else 2),
         "optimizer_mb": 880.0 / (1 if s == 0 else 2)} for s in range(4)])
    write_bench_json(bench_dir / "e2e.json", "e2e", "end to end", [
        {"model": "tiny", "seq": 128, "precision": "fp32", "contender": c, "seq_per_s": v}
        for c, v in (("bertperf", 60.0), ("hf", 30.0))])
    write_bench_json(bench_dir / "other.json", "something_new", "a bench the report has no plot for",
                     [{"name": "x", "value": 3}])
    return [r1, r2, str(bench_dir)]


def test_report_tables_and_plots(inputs, tmp_path):
    out = tmp_path / "report"
    done = write_report(inputs, str(out))
    assert done["runs"] == 2 and done["benches"] == 4
    md = (out / "report.md").read_text()
    # runs table: last loss of each run, as written
    assert re.search(r"\| tiny-1rank \| tiny \| 1 \| .*\| 8\.25 \|", md)
    assert re.search(r"\| tiny-2rank \| tiny \| 2 \| .*\| 8 \|", md)
    # scaling: 36 / 20 = 1.8x on 2 ranks, efficiency 0.9
    assert re.search(r"\| tiny-2rank \| 2 \| 36 \| 1\.80 \| 0\.9 \|", md), md
    # the bench without a plotter still appears as a table
    assert "| name | value |" in md and "| x | 3 |" in md
    pngs = sorted(os.listdir(out / "plots"))
    # loss, seq/s, scaling, kernels, e2e, zero memory
    assert len(pngs) == done["plots"] == 6, pngs
    for name in pngs:
        data = (out / "plots" / name).read_bytes()
        assert data.startswith(PNG_MAGIC), name
        assert f"plots/{name}" in md
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 6 and "src='plots/" not in html  # self-contained


def test_projection_matches_formula_and_anchors():
    base = BertConfig.preset("base")
    a100, h100 = projection.project(base, 128)
    # REFERENCE.md: ~70 GFLOP per BERT-Base sequence at 128 with the sparse head (20 masked)
    assert a100.flops_per_seq == pytest.approx(69.93e9, rel=1e-3)
    assert a100.roofline_seq_per_s == pytest.approx(312e12 / a100.flops_per_seq)
    assert h100.roofline_seq_per_s == pytest.approx(989.4e12 / a100.flops_per_seq)
    # BERT-Large at an anchor's own utilisation gives back the anchor's published seq/s
    large = BertConfig.preset("large")
    for seq, published in ((128, 580.0), (512, 210.0)):
        p = projection.project(large, seq, gpus=("A100",))[0]
        assert p.anchor is not None and p.anchor.seq_per_s == published
        assert p.at_anchor_mfu_seq_per_s == pytest.approx(published, rel=1e-9)
        assert 0 < p.anchor_mfu < 1


def test_html_renders_in_headless_chromium(inputs, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "Debian's chromium is installed by `make setup`; it is missing"
    out = tmp_path / "report"
    done = write_report(inputs, str(out))
    html_path = (out / "report.html").resolve()
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                          html_path.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body[^>]*>", dom.stdout)
    assert body, dom.stdout[:500]
    expected = done["plots"]
    assert f'data-plots="{expected}"' in body.group(0)
    # every embedded PNG decoded in the browser (set by the page's load handler)
    assert f'data-plots-loaded="{expected}"' in body.group(0), body.group(0)
    assert dom.stdout.count("<table>") >= 6


def test_machine_info_fields():
    info = machine_info()
    assert info["cores"] >= 1 and info["torch"] and info["cpu"]


def test_bad_inputs_name_the_file(tmp_path, capsys):
    with pytest.raises(BertperfError, match="no such file"):
        write_report([str(tmp_path / "missing")], str(tmp_path / "o"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(BertperfError, match=re.escape(str(bad))):
        write_report([str(bad)], str(tmp_path / "o"))
    notbench = tmp_path / "x.json"
    notbench.write_text('{"a": 1}')
    with pytest.raises(BertperfError, match="not a bench result"):
        write_report([str(notbench)], str(tmp_path / "o"))
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text("step,loss\n10,abc\n")
    with pytest.raises(BertperfError, match="line 2"):
        write_report([str(run)], str(tmp_path / "o"))
    assert not (tmp_path / "o").exists()  # nothing half-written


def test_cli(inputs, tmp_path, capsys):
    assert main(inputs + ["--out", str(tmp_path / "r")]) == 0
    assert "2 run(s), 4 bench file(s), 6 plot(s)" in capsys.readouterr().out
