"""The counter-based dropout mask shared by every backend (see csrc/include/bertperf/common.h).

Element i (flat index, taken modulo 2^32) of a tensor is kept iff
    mix32(mix32(i ^ seed_lo) + seed_hi) >= floor(p * 2^32)
with mix32 the murmur3 finalizer, and kept elements are scaled by 1 / (1 - p) (rounded to fp32).
The CPU, CUDA and Triton kernels compute exactly this, so for one seed all backends, and this
pure-torch version used by the references, draw the same mask. Backward passes regenerate it.
"""
from __future__ import annotations

import torch

M32 = 0xFFFFFFFF


def threshold(p: float) -> int:
    """floor(p * 2^32) saturated to 2^32 - 1; 0 (no dropout) for p <= 0."""
    if p <= 0.0:
        return 0
    t = float(p) * 4294967296.0
    return M32 if t >= 4294967295.0 else int(t)


def inv_keep(p: float) -> float:
    """1 / (1 - p) rounded to fp32, or 1.0 when threshold(p) == 0."""
    if threshold(p) == 0:
        return 1.0
    return float(torch.tensor(1.0 / (1.0 - float(p)), dtype=torch.float32))


def split_seed(seed: int) -> tuple[int, int]:
    seed &= (1 << 64) - 1
    return seed & M32, (seed >> 32) & M32


def _mix32(h: torch.Tensor) -> torch.Tensor:
    """murmur3 fmix32 on int64 tensors holding uint32 values (int64 products wrap; the low 32
    bits stay exact)."""
    h = h ^ (h >> 16)
    h = (h * 0x85EBCA6B) & M32
    h = h ^ (h >> 13)
    h = (h * 0xC2B2AE35) & M32
    return h ^ (h >> 16)


def keep_mask(seed: int, shape: torch.Size | tuple[int, ...], p: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """Boolean mask of kept elements for a contiguous tensor of `shape`."""
    numel = 1
    for s in shape:
        numel *= s
    lo, hi = split_seed(seed)
    idx = torch.arange(numel, dtype=torch.int64, device=device) & M32
    h = _mix32((_mix32(idx ^ lo) + hi) & M32)
    return (h >= threshold(p)).reshape(shape)


def dropout_factor(seed: int, shape, p: float, device="cpu", dtype=torch.float32) -> torch.Tensor:
    """The multiplier per element: inv_keep(p) where kept, 0 where dropped."""
    keep = keep_mask(seed, shape, p, device)
    return keep.to(dtype) * inv_keep(p)
