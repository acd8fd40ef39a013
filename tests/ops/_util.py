"""Shared helpers for the kernel tests: backends that run here, dtype cases, error bounds."""
from __future__ import annotations

import torch

# Backends exercised on this CPU-only machine (cuda is compile-checked by test_cuda_compile.py).
BACKENDS = ("cpu", "triton", "torch")

# fp32 tolerances (Liger-Kernel uses 1e-5 for LayerNorm outputs). Gradients that are sums over
# rows (parameter and bias gradients) get 1e-4: they add up to a few hundred fp32 terms.
FP32_TOL = {"atol": 1e-5, "rtol": 1e-5}
FP32_GRAD_TOL = {"atol": 1e-4, "rtol": 1e-4}


def max_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return (a.double() - ref.double()).abs().max().item()


def assert_bf16_close(out: torch.Tensor, ref32: torch.Tensor, torch_bf16: torch.Tensor, what: str) -> None:
    """bf16 check: our error against the fp32 reference may be at most twice torch's own bf16
    composite error on the same inputs, plus one bf16 ulp of the largest value (2^-7 of it; the
    Triton interpreter truncates fp32 -> bf16 where compiled code rounds to nearest)."""
    assert out.dtype == torch.bfloat16, f"{what}: expected bf16 output, got {out.dtype}"
    assert torch.isfinite(out.float()).all(), f"{what}: non-finite values"
    ours = max_err(out, ref32)
    theirs = max_err(torch_bf16, ref32)
    floor = 2.0**-7 * ref32.abs().max().item()
    assert ours <= 2.0 * theirs + floor, (
        f"{what}: bf16 error {ours:.3g} exceeds 2 x torch's bf16 error {theirs:.3g} + {floor:.3g}")


def assert_matches(out, ref32, torch_lowp, dtype, what, grad=False):
    """fp32: assert_close with the stated tolerances; bf16: assert_bf16_close."""
    if out is None or ref32 is None:
        assert out is None and ref32 is None, f"{what}: one side is None"
        return
    if dtype == torch.float32:
        tol = FP32_GRAD_TOL if grad else FP32_TOL
        torch.testing.assert_close(out, ref32.to(out.dtype), **tol, msg=lambda m: f"{what}: {m}")
    else:
        assert_bf16_close(out, ref32, torch_lowp, what)


def leaf(t: torch.Tensor | None, dtype=None) -> torch.Tensor | None:
    """A detached copy (optionally cast) that requires grad."""
    if t is None:
        return None
    t = t.detach().to(dtype or t.dtype).clone()
    return t.requires_grad_(True)


def grads(*ts):
    return [t.grad if t is not None else None for t in ts]


def at_each_cpu_isa(fn):
    """{level: fn()} for every CPU code path this machine can run (1 baseline, 3 AVX2, 4 AVX-512,
    5 AVX-512 with native bf16 stores);
    the best level is restored afterwards."""
    isa = torch.ops.bertperf.cpu_isa
    best = isa(0)
    results = {}
    try:
        for level in (1, 3, 4, 5):
            used = isa(level)
            results[used] = fn()
    finally:
        isa(best)
    assert 1 in results, "the baseline CPU variant must always be selectable"
    return results
