"""Bench layer_norm: LN(x + bias + residual) fused vs the eager composite and torch.compile of it.

BERT-base shape 8 x 128 x 768; beyond-cache shape 8192 x 768 cycled over enough input sets to
exceed 512 MB (see bench/common.py). Run: `python bench/bench_layer_norm.py [--threads 1 2]`.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Case, bench_main, input_set_count  # noqa: E402

from bertperf.ops.layer_norm import layer_norm, layer_norm_ref  # noqa: E402

SHAPES = {"bert-base": (8, 128, 768), "big": (8192, 768)}

# Bytes, in passes over one [rows, H] tensor (a write also costs a read where the cache
# write-allocates; counted once here, as in the GB/s column).
NOTES = [
    "layer_norm bytes: fused fwd 3 passes (read x, residual; write y) vs eager 7 (x+bias: 2, "
    "+residual: 3, layer_norm: 2). Fused bwd, fp32: 3 (read dy, y; write dx: xhat = (y - beta) / "
    "gamma); bf16, or a gamma ~0: 4 (read dy, x, residual; write dx). Eager bwd 4 (read dy, s; "
    "write ds; dbias = sum(ds) reads ds). Byte bound of fwd+bwd: 11/6 = 1.83x (fp32), 11/7 = "
    "1.57x (bf16).",
]


def build_cases(dev: torch.device, dtype: torch.dtype, dname: str, backend: str, big: bool = True) -> list[Case]:
    cases = []
    for label, shape in SHAPES.items():
        if label == "big" and not big:
            continue
        h = shape[-1]
        numel = torch.Size(shape).numel()
        es = torch.empty((), dtype=dtype).element_size()
        sets = input_set_count(2 * numel * es) if label == "big" else 1
        gamma = torch.ones(h, device=dev, dtype=dtype, requires_grad=True)
        beta = torch.zeros(h, device=dev, dtype=dtype, requires_grad=True)
        bias = torch.randn(h, device=dev, dtype=dtype, requires_grad=True)
        input_sets = [[torch.randn(shape, device=dev, dtype=dtype, requires_grad=True),
                       torch.randn(shape, device=dev, dtype=dtype, requires_grad=True),
                       bias, gamma, beta] for _ in range(sets)]

        def fused(x, res, bias, gamma, beta):
            return layer_norm(x, gamma, beta, bias, res, 1e-12, backend=backend)

        if backend == "apex":  # NVIDIA apex's fused LayerNorm (the adds stay separate)
            from apex.normalization.fused_layer_norm import fused_layer_norm_affine

            def fused(x, res, bias, gamma, beta):  # noqa: F811
                return fused_layer_norm_affine(x + bias + res, gamma, beta, (x.shape[-1],), 1e-12)

        def eager(x, res, bias, gamma, beta):
            return layer_norm_ref(x, gamma, beta, bias, res, 1e-12, upcast=False)

        cases.append(Case("layer_norm", "x".join(map(str, shape)), dname, fused, eager, input_sets,
                          bytes_fwd=3 * numel * es,  # read x, residual; write y
                          # fp32: read dy, y; write dx. bf16 recomputes: read dy, x, residual
                          bytes_bwd=(3 if dtype != torch.bfloat16 else 4) * numel * es,
                          big=label == "big"))
    return cases


def main(argv: list[str] | None = None) -> int:
    return bench_main(build_cases, __doc__, argv, NOTES)


if __name__ == "__main__":
    sys.exit(main())
