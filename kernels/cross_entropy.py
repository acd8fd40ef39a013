"""Triton cross_entropy: bias add, softmax cross-entropy, accuracy and logits gradient per row
(see bertperf/ops/cross_entropy.py; the math is csrc/include/bertperf/cross_entropy.h).

One program per row, looping over the row in blocks of BLOCK = min(next_power_of_2(V), 4096)
columns, so any vocabulary size works (BERT's 30522 included). Pass 1 reads x (+ bias), writes
y and keeps an online max and rescaled sum of exponentials (one exp per element, one rescale per
block); pass 2 reads x (+ bias) again and writes grad. Math in fp32, y and grad in x's dtype.
The bias gradient is summed with tl.atomic_add of each row's fp32 gradient into a zero-initialised
fp32 [V] buffer (no second kernel, no [programs, V] partials; the order of the fp32 additions is
not deterministic on a GPU).
Limits: x [M, V] fp32 or bf16 (made contiguous), M < 2^31 rows; labels int64 (int32 accepted and
widened) in [0, V), checked on the host (one device sync, as the C++ op does).
Bytes moved per element (T = element size): reads x twice, writes y and grad: 4T (3T without a
bias: no y); with a bias + 4 bytes of fp32 atomics per element (L2-resident: V x 4 B = 122 KB).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from bertperf.kernels._common import check_input, check_param
from bertperf.utils.errors import BertperfError

MAX_BLOCK = 4096


@triton.jit
def _load_logits(x_ptr, bias_ptr, base, c, msk, HAS_BIAS: tl.constexpr):
    """z = x[row, c] (+ bias[c]) in fp32 for the columns c of one block (masked lanes 0)."""
    z = tl.load(x_ptr + base + c, mask=msk, other=0.0).to(tl.float32)
    if HAS_BIAS:
        z += tl.load(bias_ptr + c, mask=msk, other=0.0)
    return z


@triton.jit
def _ce_fwd_kernel(
    x_ptr,  # [rows, cols] T, contiguous
    bias_ptr,  # [cols] fp32 (ignored unless HAS_BIAS)
    labels_ptr,  # [rows] int64, each in [0, cols)
    y_ptr,  # [rows, cols] T, contiguous: x + bias (written only if HAS_BIAS)
    grad_ptr,  # [rows, cols] T, contiguous: scale * (softmax - onehot)
    loss_ptr,  # [rows] fp32: logsumexp - z[label]
    correct_ptr,  # [rows] uint8: z[label] == max z
    dbias_ptr,  # [cols] fp32, zero-initialised: += grad of every row (ignored unless HAS_BIAS)
    cols,  # int: V (= row stride)
    scale,  # float: multiplies grad and dbias
    HAS_BIAS: tl.constexpr,
    BLOCK: tl.constexpr,  # columns per loop step, a power of 2
):
    row = tl.program_id(0)
    base = row.to(tl.int64) * cols
    offs = tl.arange(0, BLOCK)
    # pass 1: y, and the running max m with the sum s of exp(z - m) (one rescale per block)
    m = -float("inf")
    s = 0.0
    for start in range(0, cols, BLOCK):
        c = start + offs
        msk = c < cols
        z = _load_logits(x_ptr, bias_ptr, base, c, msk, HAS_BIAS)
        if HAS_BIAS:
            tl.store(y_ptr + base + c, z.to(y_ptr.dtype.element_ty), mask=msk)
        z = tl.where(msk, z, -float("inf"))
        m_new = tl.maximum(m, tl.max(z, axis=0))
        shift = tl.where(m_new == -float("inf"), 0.0, m_new)  # only -inf logits so far
        s = s * tl.exp(m - shift) + tl.sum(tl.exp(z - shift), axis=0)
        m = m_new
    lse = m + tl.log(s)
    label = tl.load(labels_ptr + row)
    picked = tl.load(x_ptr + base + label).to(tl.float32)
    if HAS_BIAS:
        picked += tl.load(bias_ptr + label)
    tl.store(loss_ptr + row, lse - picked)
    tl.store(correct_ptr + row, (picked == m).to(tl.uint8))
    # pass 2: grad (and the bias gradient)
    for start in range(0, cols, BLOCK):
        c = start + offs
        msk = c < cols
        z = _load_logits(x_ptr, bias_ptr, base, c, msk, HAS_BIAS)
        p = tl.exp(z - lse)
        g = scale * tl.where(c == label, p - 1.0, p)
        tl.store(grad_ptr + base + c, g.to(grad_ptr.dtype.element_ty), mask=msk)
        if HAS_BIAS:
            tl.atomic_add(dbias_ptr + c, g, mask=msk)


def _check_labels(labels: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    rows, cols = x.shape
    if labels.dim() != 1 or labels.shape[0] != rows or labels.dtype not in (torch.int64, torch.int32):
        raise BertperfError(f"bertperf.kernels.cross_entropy: `labels` must be int64 [{rows}], got "
                            f"{labels.dtype} {tuple(labels.shape)}")
    if labels.device != x.device:
        raise BertperfError(f"bertperf.kernels.cross_entropy: `labels` are on {labels.device} but the "
                            f"logits are on {x.device}; move them to the same device")
    lo, hi = torch.aminmax(labels)
    lo, hi = int(lo), int(hi)
    if lo < 0 or hi >= cols:
        raise BertperfError(f"bertperf.kernels.cross_entropy: every label must be a class index in "
                            f"[0, {cols}), got labels in [{lo}, {hi}]")
    return labels.long().contiguous()


def cross_entropy_fwd(x, bias, labels, scale):
    """-> (y [M, V] x.dtype or None, grad [M, V] x.dtype, loss [M] fp32, correct [M] uint8,
    dbias [V] fp32 or None); y and dbias only with a bias. Same contract as
    torch.ops.bertperf.cross_entropy_fwd."""
    check_input(x, "cross_entropy")
    if x.dim() != 2:
        raise BertperfError(f"bertperf.kernels.cross_entropy: logits must be [rows, classes], got "
                            f"shape {tuple(x.shape)}")
    if x.shape[0] >= 2**31:
        raise BertperfError(f"bertperf.kernels.cross_entropy: at most 2^31 - 1 rows supported, got "
                            f"{x.shape[0]}; split the batch or use the cpu/cuda/torch backend")
    x = x.contiguous()
    rows, cols = x.shape
    labels = _check_labels(labels, x)
    y = dbias = None
    if bias is not None:
        if bias.device != x.device:
            raise BertperfError(f"bertperf.kernels.cross_entropy: `bias` is on {bias.device} but the "
                                f"logits are on {x.device}; move it to the same device")
        b = check_param(bias, cols, "cross_entropy", "bias")
        y = torch.empty_like(x)
        dbias = torch.zeros(cols, dtype=torch.float32, device=x.device)
    grad = torch.empty_like(x)
    loss = torch.empty(rows, dtype=torch.float32, device=x.device)
    correct = torch.empty(rows, dtype=torch.uint8, device=x.device)
    block = min(triton.next_power_of_2(cols), MAX_BLOCK)
    _ce_fwd_kernel[(rows,)](
        x, b if bias is not None else x, labels, y if y is not None else grad, grad, loss, correct,
        dbias if dbias is not None else loss, cols, float(scale),
        HAS_BIAS=bias is not None, BLOCK=block, num_warps=8 if block >= 2048 else 4,
    )
    return y, grad, loss, correct, dbias
