"""Summary of the fused-kernel benches: every op's table in one run, one bandwidth measurement.

Run: `python bench/bench_kernels.py [--threads 1 2] [--dtypes fp32 bf16] [--no-compile]`, or a
subset with `--ops layer_norm softmax`. Each row: fused time, eager composite time, torch.compile
time, the ratios, and (for the beyond-cache sizes) GB/s and the fraction of the copy bandwidth
measured in the same run. The targets: x eager >= 1.5 and >= 70% of copy bandwidth.
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Case, collect, device, format_table, parser, use_malloc, with_totals  # noqa: E402

OPS = ("layer_norm", "bias_gelu", "bias_dropout_residual", "softmax", "cross_entropy", "packed_attention")
# packed_attention removes layout copies around GEMMs (its time is GEMMs): reported, but not
# counted against the 1.5x / 70%-bandwidth targets of the fused element-wise ops
UNTARGETED = ("packed_attention",)


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--ops", nargs="+", default=list(OPS), choices=OPS)
    p.add_argument("--json", default=str(Path(__file__).resolve().parent / "results" / "kernels.json"),
                   help="bench result file for `bertperf report` (default %(default)s)")
    args = p.parse_args(argv)
    use_malloc(args, argv)
    modules = [importlib.import_module(f"bench_{op}") for op in args.ops]
    builders = [m.build_cases for m in modules]
    notes = [n for m in modules for n in getattr(m, "NOTES", [])]

    def build_all(*a, **kw) -> list[Case]:
        return [case for build in builders for case in build(*a, **kw)]

    rows, bandwidth = collect(build_all, args)
    print(format_table(rows, bandwidth, device()))
    counted = [r for r in with_totals(rows) if not r.op.startswith(UNTARGETED)]
    slow = [r for r in counted if r.pass_ == "fwd+bwd" and r.vs_eager < 1.5]
    low_bw = [r for r in rows if r.bw_frac is not None and r.bw_frac < 0.7]
    print(f"\nfwd+bwd below 1.5x eager (packed_attention not counted): {len(slow)}; beyond-cache passes below 70% of the copy "
          f"bandwidth: {len(low_bw)} of {sum(r.bw_frac is not None for r in rows)}")
    if notes:
        print("\n" + "\n".join(notes))
    from bertperf.report.machine import write_bench_json
    from bertperf.utils.malloc import describe

    out = [{"op": r.op, "shape": r.shape, "dtype": r.dtype, "threads": r.threads, "pass": r.pass_,
            "backend": r.backend, "fused_ms": round(r.fused_ms, 4), "eager_ms": round(r.eager_ms, 4),
            "compiled_ms": None if r.compiled_ms is None else round(r.compiled_ms, 4),
            "x_eager": round(r.vs_eager, 3), "x_compile": None if r.vs_compiled is None else round(r.vs_compiled, 3),
            "gb_per_s": None if r.gbps is None else round(r.gbps, 2),
            "copy_bw_frac": None if r.bw_frac is None else round(r.bw_frac, 3)} for r in with_totals(rows)]
    bw = ", ".join(f"{t} thread(s) {b:.1f} GB/s" for t, b in bandwidth.items())
    write_bench_json(args.json, "kernels", "Fused kernels against eager torch and torch.compile", out,
                     [f"copy bandwidth measured in this run: {bw}", describe(), "x_eager / x_compile = baseline time / fused "
                      "time; targets: x_eager >= 1.5 (fwd+bwd) and >= 70% of copy bandwidth (beyond-cache rows)"]
                     + notes)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
