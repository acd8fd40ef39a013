"""Bench bias_dropout_residual: residual + dropout(x + bias, p) fused vs the eager composite
(x + bias, F.dropout, + residual) and torch.compile of it, at p = 0.1 (training) and p = 0.

BERT-base shape 8 x 128 x 768; beyond-cache shape 8192 x 768 cycled over enough input sets to
exceed 512 MB. Run: `python bench/bench_bias_dropout_residual.py [--threads 1 2]`.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Case, bench_main, input_set_count  # noqa: E402

from bertperf.ops.bias_dropout_residual import bias_dropout_residual, bias_dropout_residual_ref  # noqa: E402

SHAPES = {"bert-base": (8, 128, 768), "big": (8192, 768)}

NOTES = [
    "bias_dropout_residual bytes at p = 0 (a fused add; the model never calls it: layer_norm "
    "absorbs that bias and residual): fused fwd 3 passes (read x, residual; write y) vs eager 5 "
    "(x+bias: 2, +residual: 3); bwd 1 vs 1 (dx = dresidual = dy itself, no copy; dbias = "
    "sum(dy) reads dy once, as eager does). Byte bound of fwd+bwd: 6/4 = 1.5x (1.6x if each "
    "write also costs a read): the target is at the byte limit, reachable only when the fused "
    "pass streams as fast as eager's. At p = 0.1 the mask is regenerated from a hash, not "
    "stored: fwd 3 passes vs eager's 7+ (mask write and read), bwd 2 (read dy; write dx) vs 3.",
]


def build_cases(dev: torch.device, dtype: torch.dtype, dname: str, backend: str, big: bool = True) -> list[Case]:
    if backend == "apex":  # no apex equivalent of this op
        return []
    cases = []
    for p in (0.1, 0.0):
        for label, shape in SHAPES.items():
            if label == "big" and not big:
                continue
            numel = torch.Size(shape).numel()
            es = torch.empty((), dtype=dtype).element_size()
            sets = input_set_count(2 * numel * es) if label == "big" else 1
            bias = torch.randn(shape[-1], device=dev, dtype=dtype, requires_grad=True)
            input_sets = [[torch.randn(shape, device=dev, dtype=dtype, requires_grad=True), bias,
                           torch.randn(shape, device=dev, dtype=dtype, requires_grad=True)]
                          for _ in range(sets)]

            def fused(x, b, r, p=p):
                return bias_dropout_residual(x, b, r, p, training=True, backend=backend)

            def eager(x, b, r, p=p):
                return bias_dropout_residual_ref(x, b, r, p, training=True, upcast=False)

            cases.append(Case(f"bias_dropout_residual(p={p})", "x".join(map(str, shape)), dname, fused,
                              eager, input_sets,
                              bytes_fwd=3 * numel * es,  # read x, residual; write y
                              # p > 0: read dy, write dx; p = 0: dx is dy (dbias is a row sum)
                              bytes_bwd=(2 if p > 0 else 1) * numel * es,
                              big=label == "big"))
    return cases


def main(argv: list[str] | None = None) -> int:
    return bench_main(build_cases, __doc__, argv, NOTES)


if __name__ == "__main__":
    sys.exit(main())
