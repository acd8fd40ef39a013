"""Triton version of the shared counter-based dropout hash (bertperf/ops/_dropout.py)."""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _mix32(h):
    h = h ^ (h >> 16)
    h = h * 0x85EBCA6B
    h = h ^ (h >> 13)
    h = h * 0xC2B2AE35
    return h ^ (h >> 16)


@triton.jit
def dropout_factor(idx, seed_lo, seed_hi, threshold, inv_keep):
    """inv_keep where element `idx` (flat index, any int dtype) is kept, else 0. All arithmetic
    in uint32, matching the C++ kernels bit for bit."""
    h = idx.to(tl.uint32) ^ seed_lo.to(tl.uint32)
    h = _mix32(h)
    h = _mix32(h + seed_hi.to(tl.uint32))
    return tl.where(h >= threshold.to(tl.uint32), inv_keep, 0.0)
