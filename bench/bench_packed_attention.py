"""Bench packed_attention: the attention GEMMs as MKL batches on the packed QKV layout (no head
copies) vs the composite the model otherwise runs (split heads, matmul, the same fused softmax
kernel, matmul, merge heads) and torch.compile of that composite, with attention dropout 0.1.

Shapes [B, S, 3h] with h = A x 64: BERT-base at seq 128 (8 x 128, 12 heads) and 256 (4 x 256),
BERT-mini (8 x 128, 4 heads). GEMM-bound, so no GB/s column; fp32 only (bf16 runs the composite).
Run: `python bench/bench_packed_attention.py [--threads 1 2]`.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Case, bench_main  # noqa: E402

from bertperf.model.bert import attention_mask_bias  # noqa: E402
from bertperf.ops.packed_attention import packed_attention, packed_attention_ref  # noqa: E402

# label: (batch, seq, heads), head size 64
SHAPES = {"base s128": (8, 128, 12), "base s256": (4, 256, 12), "mini s128": (8, 128, 4)}
P = 0.1
NOTES = [
    "packed_attention: both sides run the same GEMM kernels and the same fused softmax; the "
    "difference is the head split/merge copies (q, k, v and ctx forward, their gradients "
    "backward) and torch's per-call overhead of the 4D matmuls.",
]


def build_cases(dev: torch.device, dtype: torch.dtype, dname: str, backend: str, big: bool = True) -> list[Case]:
    if dtype != torch.float32 or backend not in ("cpu", "torch"):  # fp32 CPU GEMMs only
        return []
    cases = []
    for label, (b, s, a) in SHAPES.items():
        lengths = torch.randint(s // 2, s + 1, (b,))
        mask = attention_mask_bias((torch.arange(s)[None, :] < lengths[:, None])[:, None, None, :]).to(dev)
        qkv = torch.randn(b, s, 3 * a * 64, device=dev, dtype=dtype, requires_grad=True)

        def fused(x, m, a=a):
            return packed_attention(x, m, a, P, True, None, backend)

        def eager(x, m, a=a):
            return packed_attention_ref(x, m, a, P, True, None, backend)

        cases.append(Case(f"packed_attention {label}", f"{b}x{s}x{3 * a * 64}", dname, fused, eager, [[qkv, mask]]))
    return cases


def main(argv: list[str] | None = None) -> int:
    return bench_main(build_cases, __doc__, argv, notes=NOTES)


if __name__ == "__main__":
    sys.exit(main())
