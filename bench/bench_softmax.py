"""Bench the attention softmax: dropout(softmax(scores * scale + mask)) fused vs the eager
composite (scale, + mask, torch.softmax, F.dropout) and torch.compile of it, at p = 0.1 and 0.

BERT-base scores 8 x 12 x 128 x 128 with HF's [8, 1, 1, 128] padding mask; beyond-cache shape
32 x 12 x 128 x 128 cycled over enough input sets to exceed 512 MB.
Run: `python bench/bench_softmax.py [--threads 1 2] [--dtypes fp32 bf16]`.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Case, bench_main, input_set_count  # noqa: E402

from bertperf.ops.softmax import softmax, softmax_ref  # noqa: E402

SHAPES = {"bert-base": (8, 12, 128, 128), "big": (32, 12, 128, 128)}
SCALE = 0.125  # 1 / sqrt(64)


def _padding_mask(batch: int, sk: int, dev: torch.device, dtype: torch.dtype) -> torch.Tensor:
    lengths = torch.randint(sk // 2, sk + 1, (batch,))
    keep = torch.arange(sk)[None, :] < lengths[:, None]
    m = torch.where(keep, torch.zeros((), dtype=dtype), torch.tensor(torch.finfo(dtype).min, dtype=dtype))
    return m[:, None, None, :].to(dev)


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
            sets = input_set_count(numel * es) if label == "big" else 1
            mask = _padding_mask(shape[0], shape[-1], dev, dtype)
            input_sets = [[torch.randn(shape, device=dev, dtype=dtype, requires_grad=True), mask]
                          for _ in range(sets)]

            def fused(x, m, p=p):
                return softmax(x, m, SCALE, p, training=True, backend=backend)

            def eager(x, m, p=p):
                return softmax_ref(x, m, SCALE, p, training=True, upcast=False)

            cases.append(Case(f"softmax(p={p})", "x".join(map(str, shape)), dname, fused, eager, input_sets,
                              bytes_fwd=(3 if p > 0 else 2) * numel * es,  # read x; write y (+ probs)
                              bytes_bwd=3 * numel * es,  # read dy, probs; write dx
                              big=label == "big"))
    return cases


def main(argv: list[str] | None = None) -> int:
    return bench_main(build_cases, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
