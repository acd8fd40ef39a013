"""Helpers shared by the Triton launchers in this package (plain Python, no @triton.jit)."""
from __future__ import annotations

import os

import torch

from bertperf.utils.errors import BertperfError


def interpreting() -> bool:
    """True when Triton runs in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def check_input(x: torch.Tensor, op: str, name: str = "x") -> None:
    if x.dtype not in (torch.float32, torch.bfloat16):
        raise BertperfError(f"bertperf.kernels.{op}: `{name}` must be float32 or bfloat16, got {x.dtype}")
    if x.device.type != "cuda" and not interpreting():
        raise BertperfError(f"bertperf.kernels.{op}: CPU tensors need TRITON_INTERPRET=1 (set before "
                            "importing triton); use the 'cpu' backend for CPU tensors")
    if x.numel() == 0:
        raise BertperfError(f"bertperf.kernels.{op}: `{name}` is empty")


def check_like(t: torch.Tensor, ref: torch.Tensor, op: str, name: str) -> torch.Tensor:
    if t.shape != ref.shape or t.dtype != ref.dtype or t.device != ref.device:
        raise BertperfError(f"bertperf.kernels.{op}: `{name}` must match the input "
                            f"({tuple(ref.shape)}, {ref.dtype}, {ref.device}), got "
                            f"({tuple(t.shape)}, {t.dtype}, {t.device})")
    return t.contiguous()


def check_param(p: torch.Tensor, cols: int, op: str, name: str) -> torch.Tensor:
    if p.dim() != 1 or p.shape[0] != cols:
        raise BertperfError(f"bertperf.kernels.{op}: `{name}` must have shape [{cols}], got {tuple(p.shape)}")
    return p.float().contiguous()


def reduction_programs(rows: int, device: torch.device) -> int:
    """Programs for kernels that write per-program partial column sums."""
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        return max(1, min(rows, 4 * sms))
    return max(1, min(rows, 4))  # interpreter: few programs, each loops over rows
