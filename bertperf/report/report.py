"""`bertperf report`: a throughput report from training runs and bench results.

    bertperf report runs/demo runs/demo-1rank bench/results/*.json --out report/

Each PATH is one of:
- a training run directory of `bertperf/pretrain.py` (its `metrics.csv` and `summary.json`);
- a bench result JSON file (`bertperf.report.machine.write_bench_json`: "bench", "title",
  "machine", "rows", "notes"), or a directory holding such files.

Written to --out (created; files replaced atomically):
    report.md       markdown: machine, runs table, scaling table, one table per bench, GPU projection
    report.html     the same as one self-contained page (CSS inline, plots embedded as data: URIs;
                    works offline); `<body data-plots="N">` counts the plots it embeds
    plots/*.png     every plot as a PNG (the markdown links them)

Plots: loss and sequences/s over steps (every run), scaling of sequences/s with the number of
ranks (runs of the same model and settings), and per bench kind: kernel speedups (`kernels`),
sequences/s per contender (`e2e`), memory per ZeRO stage (`zero_memory`), time per op
(`profile`). Any other bench file is shown as a table.
"""
from __future__ import annotations

import argparse
import base64
import csv
import datetime as dt
import glob
import html
import io
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable

from bertperf.utils.errors import BertperfError, run_cli

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# inputs


@dataclass
class RunLog:
    """One training run: its metrics rows (floats) and its summary."""

    path: str
    name: str
    rows: list[dict[str, float]]
    summary: dict[str, Any]


@dataclass
class BenchResult:
    path: str
    bench: str
    title: str
    machine: dict[str, Any]
    rows: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise BertperfError(f"{path}: not valid JSON ({e}); re-run the command that wrote it") from None


def load_run(path: str) -> RunLog:
    """A pretrain output directory: metrics.csv (required) and summary.json (optional)."""
    csv_path = os.path.join(path, "metrics.csv")
    if not os.path.isfile(csv_path):
        raise BertperfError(f"{path}: no metrics.csv here; give a bertperf/pretrain.py --output_dir "
                            "or a bench result JSON")
    rows: list[dict[str, float]] = []
    with open(csv_path, newline="", encoding="utf-8") as f:
        for i, rec in enumerate(csv.DictReader(f), start=2):
            try:
                rows.append({k: float(v) for k, v in rec.items() if k is not None and v not in (None, "")})
            except ValueError as e:
                raise BertperfError(f"{csv_path}: line {i} holds a non-number ({e}); the file is damaged") from None
    if not rows or "step" not in rows[0]:
        raise BertperfError(f"{csv_path}: no metric rows with a 'step' column; the run logged nothing yet")
    summary_path = os.path.join(path, "summary.json")
    summary = _read_json(summary_path) if os.path.isfile(summary_path) else {}
    return RunLog(path, os.path.basename(os.path.normpath(path)), rows, summary)


def load_bench(path: str) -> BenchResult:
    doc = _read_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("rows"), list) or "bench" not in doc:
        raise BertperfError(f"{path}: not a bench result (needs 'bench' and a 'rows' list; "
                            "see bertperf.report.machine.write_bench_json)")
    rows = [r for r in doc["rows"] if isinstance(r, dict)]
    return BenchResult(path, str(doc["bench"]), str(doc.get("title", doc["bench"])),
                       dict(doc.get("machine") or {}), rows, [str(n) for n in doc.get("notes", [])])


def collect_inputs(paths: list[str]) -> tuple[list[RunLog], list[BenchResult]]:
    runs: list[RunLog] = []
    benches: list[BenchResult] = []
    for p in paths:
        if os.path.isdir(p) and os.path.isfile(os.path.join(p, "metrics.csv")):
            runs.append(load_run(p))
        elif os.path.isdir(p):
            found = sorted(glob.glob(os.path.join(p, "*.json")))
            if not found:
                raise BertperfError(f"{p}: neither a training run (metrics.csv) nor a folder of bench JSON files")
            benches += [load_bench(f) for f in found]
        elif os.path.isfile(p):
            benches.append(load_bench(p))
        else:
            raise BertperfError(f"{p}: no such file or directory")
    return runs, benches


# ---------------------------------------------------------------------------------------------
# plots (matplotlib, Agg, PNG bytes)


def _figure(width: float = 6.4, height: float = 3.6):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width, height), dpi=100)
    return plt, fig, ax


def _png(plt, fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def plot_runs(runs: list[RunLog], key: str, ylabel: str) -> bytes | None:
    series = [(r.name, [row["step"] for row in r.rows if key in row], [row[key] for row in r.rows if key in row])
              for r in runs]
    series = [s for s in series if s[1]]
    if not series:
        return None
    plt, fig, ax = _figure()
    for name, x, y in series:
        ax.plot(x, y, label=name, marker="." if len(x) < 50 else None)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(plt, fig)


def _bars(labels: list[str], groups: dict[str, list[float]], ylabel: str, title: str = "",
          baseline: float | None = None, horizontal: bool = False) -> bytes:
    extent = 0.3 * len(labels) * max(1, len(groups)) ** 0.5
    if horizontal:  # one row per label: grow downwards
        plt, fig, ax = _figure(8.0, max(3.6, extent + 1.0))
    else:
        plt, fig, ax = _figure(max(6.4, 0.5 * len(labels) * max(1, len(groups))), 3.8)
    n = max(1, len(groups))
    width = 0.8 / n
    for k, (gname, values) in enumerate(groups.items()):
        pos = [i + (k - (n - 1) / 2) * width for i in range(len(labels))]
        (ax.barh if horizontal else ax.bar)(pos, values, width, label=gname)
    ticks = list(range(len(labels)))
    if horizontal:
        ax.set_yticks(ticks, labels, fontsize=8)
        ax.set_xlabel(ylabel)
        ax.invert_yaxis()
    else:
        ax.set_xticks(ticks, labels, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(ylabel)
    if baseline is not None:
        (ax.axvline if horizontal else ax.axhline)(baseline, color="black", linewidth=0.8, linestyle="--")
    if title:
        ax.set_title(title, fontsize=10)
    if len(groups) > 1:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="x" if horizontal else "y")
    return _png(plt, fig)


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _first_key(row: dict[str, Any], names: tuple[str, ...]) -> str | None:
    return next((n for n in names if n in row), None)


def plot_kernels(b: BenchResult) -> bytes | None:
    """Speedup over eager torch (fwd+bwd rows when present) per op and dtype."""
    if not b.rows:
        return None
    ratio = _first_key(b.rows[0], ("x_eager", "vs_eager", "speedup"))
    if ratio is None:
        return None
    rows = [r for r in b.rows if r.get("pass", "fwd+bwd") == "fwd+bwd"] or b.rows
    labels, groups = [], {}
    for r in rows:
        label = " ".join(str(r[k]) for k in ("op", "shape", "dtype") if k in r)
        if label not in labels:
            labels.append(label)
    for r in rows:
        g = f"{r.get('threads', '')} thread(s)" if "threads" in r else "speedup"
        groups.setdefault(g, [0.0] * len(labels))
        label = " ".join(str(r[k]) for k in ("op", "shape", "dtype") if k in r)
        groups[g][labels.index(label)] = _num(r[ratio]) or 0.0
    return _bars(labels, groups, "x faster than eager torch", baseline=1.0, horizontal=True)


def plot_e2e(b: BenchResult) -> bytes | None:
    """Sequences/s per model (x) and contender (bars)."""
    if not b.rows:
        return None
    r0 = b.rows[0]
    value = _first_key(r0, ("seq_per_s", "seq_per_s_median"))
    model = _first_key(r0, ("model", "preset", "config"))
    who = _first_key(r0, ("contender", "framework", "impl"))
    if not (value and model and who):
        return None
    labels: list[str] = []
    for r in b.rows:
        lab = f"{r[model]} s{r['seq']}" if "seq" in r else str(r[model])
        if "precision" in r:
            lab += f" {r['precision']}"
        if lab not in labels:
            labels.append(lab)
    groups: dict[str, list[float]] = {}
    for r in b.rows:
        lab = f"{r[model]} s{r['seq']}" if "seq" in r else str(r[model])
        if "precision" in r:
            lab += f" {r['precision']}"
        groups.setdefault(str(r[who]), [0.0] * len(labels))[labels.index(lab)] = _num(r[value]) or 0.0
    return _bars(labels, groups, "sequences/s")


def plot_zero_memory(b: BenchResult) -> bytes | None:
    """Per-rank memory by ZeRO stage, stacked: parameters, gradients, optimizer state."""
    if not b.rows:
        return None
    stage = _first_key(b.rows[0], ("stage", "zero_stage"))
    parts = [k for k in b.rows[0] if k.endswith(("_mb", "_mib", "_gib", "_bytes"))
             and any(p in k for p in ("param", "grad", "optim", "master"))]
    if stage is None or not parts:
        return None
    plt, fig, ax = _figure()
    bottom = [0.0] * len(b.rows)
    labels = [f"ZeRO-{r[stage]}" for r in b.rows]
    for p in parts:
        vals = [_num(r.get(p)) or 0.0 for r in b.rows]
        ax.bar(labels, vals, bottom=bottom, label=p)
        bottom = [x + y for x, y in zip(bottom, vals)]
    unit = parts[0].rsplit("_", 1)[1].replace("mib", "MiB").replace("mb", "MB").replace("gib", "GiB")
    ax.set_ylabel(f"per-rank memory ({unit})")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return _png(plt, fig)


def plot_profile(b: BenchResult) -> bytes | None:
    """Time per op, largest first (top 15)."""
    if not b.rows:
        return None
    value = _first_key(b.rows[0], ("percent", "self_ms", "ms", "seconds"))
    name = _first_key(b.rows[0], ("op", "name"))
    if not (value and name):
        return None
    rows = sorted(b.rows, key=lambda r: -(_num(r.get(value)) or 0.0))[:15]
    return _bars([str(r[name]) for r in rows], {value: [_num(r.get(value)) or 0.0 for r in rows]},
                 value, horizontal=True)


PLOTS: dict[str, Callable[[BenchResult], bytes | None]] = {
    "kernels": plot_kernels,
    "e2e": plot_e2e,
    "zero_memory": plot_zero_memory,
    "profile": plot_profile,
}


# ---------------------------------------------------------------------------------------------
# tables


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return "-" if v is None else str(v)
    if isinstance(v, float):
        if v == 0:
            return "0"
        a = abs(v)
        if v.is_integer() and a < 1e9:
            return str(int(v))
        return f"{v:.3g}" if a < 1 or a >= 1e5 else f"{v:.2f}" if a < 100 else f"{v:.1f}"
    return str(v)


def table(header: list[str], rows: list[list[Any]]) -> list[list[str]]:
    return [header] + [[_fmt(v) for v in r] for r in rows]


def md_table(t: list[list[str]]) -> str:
    lines = ["| " + " | ".join(t[0]) + " |", "|" + "---|" * len(t[0])]
    lines += ["| " + " | ".join(r) + " |" for r in t[1:]]
    return "\n".join(lines)


def html_table(t: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in t[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in t[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def runs_table(runs: list[RunLog]) -> list[list[str]]:
    rows = []
    for r in runs:
        s = r.summary
        rows.append([r.name, s.get("model_config", "?"), s.get("world_size", "?"), s.get("threads_per_rank", "?"),
                     s.get("zero_stage", "?"), "bf16" if s.get("bf16") else "fp32", s.get("seq_length", "?"),
                     s.get("global_batch", "?"), r.rows[-1].get("step"), s.get("seq_per_s"), s.get("tflops"),
                     r.rows[0].get("loss"), r.rows[-1].get("loss")])
    return table(["run", "model", "ranks", "threads/rank", "ZeRO", "precision", "seq len", "global batch",
                  "last step", "seq/s", "TFLOP/s", "first loss", "last loss"], rows)


def scaling_groups(runs: list[RunLog]) -> dict[str, list[RunLog]]:
    """Runs of one model, precision, ZeRO stage and sequence length, by number of ranks (>= 2 sizes)."""
    groups: dict[str, list[RunLog]] = {}
    for r in runs:
        s = r.summary
        if "world_size" not in s or "seq_per_s" not in s:
            continue
        key = f"{s.get('model_config')} {'bf16' if s.get('bf16') else 'fp32'} ZeRO-{s.get('zero_stage')} s{s.get('seq_length')}"
        groups.setdefault(key, []).append(r)
    return {k: sorted(v, key=lambda r: r.summary["world_size"]) for k, v in groups.items()
            if len({r.summary["world_size"] for r in v}) > 1}


def scaling_table(groups: dict[str, list[RunLog]]) -> list[list[str]]:
    rows = []
    for key, rs in groups.items():
        base = rs[0].summary
        for r in rs:
            s = r.summary
            speedup = s["seq_per_s"] / base["seq_per_s"] if base["seq_per_s"] else None
            ideal = s["world_size"] / base["world_size"]
            rows.append([key, r.name, s["world_size"], s["seq_per_s"], speedup,
                         speedup / ideal if speedup else None])
    return table(["settings", "run", "ranks", "seq/s", "speedup", "efficiency"], rows)


def bench_table(b: BenchResult) -> list[list[str]]:
    cols: list[str] = []
    for r in b.rows:
        cols += [k for k in r if k not in cols]
    return table(cols, [[r.get(c) for c in cols] for r in b.rows])


def machine_table(machine: dict[str, Any]) -> list[list[str]]:
    rows = [[k, ", ".join(v) if isinstance(v, list) else v] for k, v in machine.items()]
    return table(["", "value"], rows)


def projection_table(runs: list[RunLog]) -> tuple[list[list[str]], list[str]]:
    """GPU projection for every distinct (model, seq len) of the runs, plus BERT-Base/Large at 128/512."""
    from bertperf.model.config import BertConfig
    from bertperf.report.projection import ANCHORS, GPUS, anchor_mfu, project

    wanted: list[tuple[str, int]] = []
    for r in runs:
        spec, seq = r.summary.get("model_config"), r.summary.get("seq_length")
        if spec and seq and (spec, int(seq)) not in wanted:
            wanted.append((spec, int(seq)))
    for extra in (("base", 128), ("large", 128), ("large", 512)):
        if extra not in wanted:
            wanted.append(extra)
    rows = []
    for spec, seq in wanted:
        try:
            cfg = BertConfig.resolve(spec)
        except BertperfError:
            log.warning("report: model %s of a run is not a preset or a readable config; no projection for it", spec)
            continue
        for p in project(cfg, seq):
            rows.append([spec, seq, p.flops_per_seq / 1e9, GPUS[p.gpu].name, GPUS[p.gpu].peak_tflops,
                         p.roofline_seq_per_s, p.anchor_mfu, p.at_anchor_mfu_seq_per_s])
    anchors = [f"{a.source}, BERT-Large on {a.gpu}, seq {a.seq_len}: {a.seq_per_s:g} seq/s per GPU "
               f"(implies {100 * anchor_mfu(a):.0f}% MFU by the FLOP count used here)" for a in ANCHORS]
    t = table(["model", "seq len", "GFLOP/seq", "GPU", "peak TFLOP/s", "roofline seq/s", "anchor MFU",
               "seq/s at anchor MFU"], rows)
    return t, anchors


# ---------------------------------------------------------------------------------------------
# rendering


@dataclass
class Section:
    title: str
    text: list[str] = field(default_factory=list)  # paragraphs (plain text)
    tables: list[list[list[str]]] = field(default_factory=list)
    plots: list[tuple[str, bytes]] = field(default_factory=list)  # (file name, PNG bytes)


def build_sections(runs: list[RunLog], benches: list[BenchResult]) -> list[Section]:
    from bertperf.report.machine import machine_info

    machine = next((b.machine for b in benches if b.machine), None) or machine_info()
    sections = [Section("Machine", ["Where the bench results were measured (the first bench file's record; "
                                    "training runs ran on the machine that wrote them)."],
                        [machine_table(machine)])]
    if runs:
        s = Section("Training runs", ["seq/s counts every rank's sequences after the first step; TFLOP/s "
                                      "counts matmul FLOPs only (bertperf.report.flops: 3x forward, sparse "
                                      "MLM head)."], [runs_table(runs)])
        for key, label, fname in (("loss", "loss", "loss.png"), ("seq_per_s", "sequences/s", "seq_per_s.png")):
            png = plot_runs(runs, key, label)
            if png:
                s.plots.append((fname, png))
        sections.append(s)
        groups = scaling_groups(runs)
        if groups:
            s = Section("Scaling with ranks", ["Speedup over the fewest-rank run of the same settings; "
                                               "efficiency = speedup / ideal speedup."], [scaling_table(groups)])
            labels = list(groups)
            ranks = sorted({r.summary["world_size"] for rs in groups.values() for r in rs})
            series = {f"{n} rank(s)": [next((r.summary["seq_per_s"] for r in groups[k]
                                             if r.summary["world_size"] == n), 0.0) for k in labels] for n in ranks}
            s.plots.append(("scaling.png", _bars(labels, series, "sequences/s")))
            sections.append(s)
    for i, b in enumerate(benches):
        s = Section(f"{b.title}", [f"Source: {b.path}"] + b.notes, [bench_table(b)])
        plotter = PLOTS.get(b.bench)
        png = plotter(b) if plotter else None
        if png:
            s.plots.append((f"bench{i}_{b.bench}.png", png))
        sections.append(s)
    t, anchors = projection_table(runs)
    sections.append(Section(
        "GPU projection",
        ["Roofline = peak dense tensor-core FLOP/s / training FLOPs per sequence: an upper bound. "
         "'seq/s at anchor MFU' assumes bertperf reaches the utilisation the published anchor on that GPU "
         "implies (H100 borrows A100's, having no anchor here). Projections, not measurements: this "
         "project has no GPU. Masked tokens per sequence: 20 at 128, 80 at 512."] + anchors, [t]))
    return sections


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}th,td{border:1px solid #ccc;padding:3px 8px;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}h2{border-bottom:1px solid #ddd;padding-bottom:.2em}
p.note{color:#555;font-size:13px}"""

# sets <body data-plots-loaded="K"> once every embedded plot has decoded (a headless browser can read it)
LOAD_SCRIPT = """window.addEventListener('load',function(){var imgs=document.querySelectorAll('img.plot');
var ok=0;imgs.forEach(function(i){if(i.complete&&i.naturalWidth>0)ok++;});
document.body.setAttribute('data-plots-loaded',String(ok));});"""


def render_markdown(title: str, when: str, sections: list[Section]) -> str:
    out = [f"# {title}", "", f"Generated {when} by `bertperf report`.", ""]
    for s in sections:
        out += [f"## {s.title}", ""]
        for p in s.text:
            out += [p, ""]
        for t in s.tables:
            out += [md_table(t), ""]
        for fname, _ in s.plots:
            out += [f"![{fname}](plots/{fname})", ""]
    return "\n".join(out)


def render_html(title: str, when: str, sections: list[Section]) -> str:
    n_plots = sum(len(s.plots) for s in sections)
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{CSS}</style><script>{LOAD_SCRIPT}</script></head>",
             f"<body data-plots='{n_plots}'><h1>{html.escape(title)}</h1>",
             f"<p class='note'>Generated {html.escape(when)} by <code>bertperf report</code>.</p>"]
    for s in sections:
        parts.append(f"<h2>{html.escape(s.title)}</h2>")
        parts += [f"<p class='note'>{html.escape(p)}</p>" for p in s.text]
        parts += [html_table(t) for t in s.tables]
        for fname, png in s.plots:
            data = base64.b64encode(png).decode("ascii")
            parts.append(f"<img class='plot' alt='{html.escape(fname)}' src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(paths: list[str], out_dir: str, title: str = "bertperf throughput report") -> dict[str, Any]:
    """Build the report for `paths` into `out_dir`; returns what was written (paths and counts)."""
    runs, benches = collect_inputs(paths)
    sections = build_sections(runs, benches)
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(os.path.abspath(out_dir)) + ".", suffix=".tmp", dir=parent)
    try:
        os.makedirs(os.path.join(tmp, "plots"))
        for s in sections:
            for fname, png in s.plots:
                with open(os.path.join(tmp, "plots", fname), "wb") as f:
                    f.write(png)
        with open(os.path.join(tmp, "report.md"), "w", encoding="utf-8") as f:
            f.write(render_markdown(title, when, sections))
        with open(os.path.join(tmp, "report.html"), "w", encoding="utf-8") as f:
            f.write(render_html(title, when, sections))
        for root, dirs, files in os.walk(tmp):
            os.chmod(root, 0o755)
            for name in files:
                os.chmod(os.path.join(root, name), 0o644)
        if os.path.isdir(out_dir):
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"runs": len(runs), "benches": len(benches), "plots": sum(len(s.plots) for s in sections),
            "markdown": os.path.join(out_dir, "report.md"), "html": os.path.join(out_dir, "report.html")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bertperf report", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="training run directories (metrics.csv, summary.json) and bench result JSON files or folders")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (report.md, report.html, plots/)")
    p.add_argument("--title", default="bertperf throughput report")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    done = write_report(args.paths, args.out, args.title)
    print(f"report: {done['runs']} run(s), {done['benches']} bench file(s), {done['plots']} plot(s) -> "
          f"{done['markdown']}, {done['html']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(lambda: main(), prog="bertperf report"))
