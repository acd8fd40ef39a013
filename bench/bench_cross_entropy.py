"""Bench cross_entropy: the MLM head's bias add + mean softmax cross-entropy + accuracy count +
logits gradient, fused, vs the eager torch composite (x + bias, F.cross_entropy in fp32, a max
for the count) and torch.compile of it.

Shape [160, 30522]: the 20 masked positions of 8 sequences against BERT's uncased vocabulary
(what the MLM head computes per step at batch 8); [1280, 30522] for batch 64.
Run: `python bench/bench_cross_entropy.py [--threads 1 2] [--dtypes fp32 bf16]`.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Case, bench_main  # noqa: E402

from bertperf.ops.cross_entropy import cross_entropy, cross_entropy_ref  # noqa: E402

SHAPES = {"batch 8": (160, 30522), "batch 64": (1280, 30522)}


class _TrainingLoss(torch.autograd.Function):
    """Identity on the loss whose backward sends 1.0, as `loss.backward()` in training does (the
    bench's backward timer sends a random gradient; the fused backward is a no-op only at 1.0,
    the eager one costs the same for any value). Used on both sides."""

    @staticmethod
    def forward(ctx, loss):  # type: ignore[override]
        return loss.clone()

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        return torch.ones_like(grad)

NOTES = [
    "cross_entropy bytes: fused forward reads x and writes y and the gradient (3 passes over "
    "[M, V]); its backward passes the gradient on. Eager: x + bias (2), the fp32 log_softmax (2), "
    "nll (gather), the max for the count (1); backward: nll's zero-filled [M, V] (1), "
    "log_softmax's backward (3), the bias gradient's column sum (1).",
]


def build_cases(dev: torch.device, dtype: torch.dtype, dname: str, backend: str, big: bool = True) -> list[Case]:
    if backend == "apex":
        return []
    cases = []
    for label, (m, v) in SHAPES.items():
        if label == "batch 64" and not big:
            continue
        g = torch.Generator(device="cpu").manual_seed(0)
        x = (torch.randn(m, v, generator=g) * 3).to(device=dev, dtype=dtype).requires_grad_(True)
        bias = torch.randn(v, generator=g).to(dev).requires_grad_(True)
        labels = torch.randint(0, v, (m,), generator=g).to(dev)

        def fused(x, b, lab):
            return _TrainingLoss.apply(cross_entropy(x, b, lab, backend)[0])

        def eager(x, b, lab):
            return _TrainingLoss.apply(cross_entropy_ref(x, b, lab, upcast=False)[0])

        cases.append(Case("cross_entropy", f"{m}x{v}", dname, fused, eager, [[x, bias, labels]]))
    return cases


def main(argv: list[str] | None = None) -> int:
    return bench_main(build_cases, __doc__, argv, notes=NOTES)


if __name__ == "__main__":
    sys.exit(main())
