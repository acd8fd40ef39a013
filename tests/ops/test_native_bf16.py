"""ISA level 5 (AVX-512 + AVX512_BF16): the bf16 loops that store with vcvtneps2bf16
(csrc/cpu/cpu_common.h `store_bf16_native`) give bit-identical outputs to the level-4 loops
(portable bit-trick rounding), on rows longer than the 512-element chunk with a ragged tail.
Reference: the level-4 kernels themselves (checked against fp64 references by the other tests).
On a CPU without AVX512_BF16 both levels run the same code and the test still holds."""
from __future__ import annotations

import torch

from bertperf.ops.backend import kernels

K = kernels("cpu", "bias_gelu")


def _outputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 1031, generator=g).bfloat16()
    b = torch.randn(1031, generator=g)
    r = torch.randn(7, 1031, generator=g).bfloat16()
    dy = torch.randn(7, 1031, generator=g).bfloat16()
    s = (3 * torch.randn(2, 3, 5, 131, generator=g)).bfloat16()
    m = torch.zeros(2, 1, 1, 131)
    m[1, ..., 100:] = torch.finfo(torch.float32).min
    y, probs = K.softmax_fwd(s, m, 0.3, 0.1, 9)
    y0, _ = K.softmax_fwd(s, m, 0.3, 0.0, 9)
    gamma = 1 + 0.1 * torch.randn(1031, generator=g)
    beta = 0.1 * torch.randn(1031, generator=g)
    ln_y, ln_mean, ln_rstd = K.layer_norm_fwd(x, b, r, gamma, beta, 1e-12)
    ln_y0, ln_mean0, ln_rstd0 = K.layer_norm_fwd(x, None, None, gamma, beta, 1e-12)
    return {
        "layer_norm_fwd bias+res": (ln_y, ln_mean, ln_rstd),
        "layer_norm_fwd plain": ln_y0,
        "layer_norm_bwd bias+res": K.layer_norm_bwd(dy, x, b, r, gamma, ln_mean, ln_rstd, ln_y, beta),
        "layer_norm_bwd plain": K.layer_norm_bwd(dy, x, None, None, gamma, ln_mean0, ln_rstd0),
        "gelu_fwd erf": K.bias_gelu_fwd(x, b, "none"),
        "gelu_fwd tanh, no bias": K.bias_gelu_fwd(x, None, "tanh"),
        "gelu_bwd erf": K.bias_gelu_bwd(dy, x, b, "none"),
        "gelu_bwd tanh, no bias": K.bias_gelu_bwd(dy, x, None, "tanh"),
        "bdr_fwd p=0.2": K.bias_dropout_residual_fwd(x, b, r, 0.2, 5),
        "bdr_fwd p=0, no bias": K.bias_dropout_residual_fwd(x, None, r, 0.0, 5),
        "bdr_bwd p=0.2": K.bias_dropout_residual_bwd(dy, b, 0.2, 5),
        "softmax_fwd p=0.1": (y, probs),
        "softmax_fwd p=0": y0,
        "softmax_bwd p=0.1": K.softmax_bwd(s, probs, 0.3, 0.1, 9),
        "softmax_bwd p=0": K.softmax_bwd(s, y0, 0.3, 0.0, 9),
    }


def _flat(v):
    if isinstance(v, torch.Tensor):
        return [v]
    return [t for t in v if t is not None]


def test_native_bf16_stores_are_bit_identical_to_the_portable_loops():
    isa = torch.ops.bertperf.cpu_isa
    best = isa(0)
    try:
        isa(4)
        portable = _outputs()
        assert isa(5) >= 4
        native = _outputs()
    finally:
        isa(best)
    for name, v in portable.items():
        for a, c in zip(_flat(v), _flat(native[name]), strict=True):
            assert torch.equal(a, c), f"{name}: max diff {(a.float() - c.float()).abs().max().item()}"
