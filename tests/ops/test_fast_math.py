"""The shared fp32 math of csrc/include/bertperf/common.h (fast_exp, fast_exp_nonpositive,
fast_erf, fast_tanh) and the erf-GELU built on it, evaluated through the same multiversioned, vectorized
CPU loops as the kernels (`torch.ops.bertperf.fast_math_eval`) at every ISA level, against
float64 over the whole float range: ~1.05M fp32 bit patterns spread evenly over all 2^32 (every
4093rd), a dense grid over [-100, 100], the range ends and inf/NaN."""
from __future__ import annotations

import pytest
import torch

from bertperf.ops.backend import kernels
from tests.ops._util import at_each_cpu_isa

# fast_exp's exact range (see common.h), as the fp32 constants the kernel compares with
EXP_LO, EXP_HI = torch.tensor([-87.33654, 88.37626], dtype=torch.float32).tolist()


@pytest.fixture(scope="module")
def points() -> torch.Tensor:
    kernels("cpu", "layer_norm")  # loads bertperf._C
    bits = torch.arange(0, 2**32, 4093, dtype=torch.int64)
    bits = torch.where(bits >= 2**31, bits - 2**32, bits).to(torch.int32)
    return torch.cat([bits.view(torch.float32), torch.linspace(-100, 100, 400_001),
                      torch.tensor([EXP_LO, EXP_HI, 3.925, -3.925, 0.0, -0.0])])


SPECIALS = torch.tensor([float("inf"), float("-inf"), float("nan"), 88.5, 88.8, -87.5, -1e30, 1e30])


def _eval(x: torch.Tensor, fn: str) -> dict[int, torch.Tensor]:
    return at_each_cpu_isa(lambda: torch.ops.bertperf.fast_math_eval(x, fn).double())


def test_fast_exp_relative_error_and_specials(points):
    xd = points.double()
    ref = torch.exp(xd)
    inside = torch.isfinite(points) & (xd >= EXP_LO) & (xd <= EXP_HI)
    for fn in ("exp", "exp_nonpositive"):
        sel = inside if fn == "exp" else inside & (xd <= 0)
        for level, got in _eval(points, fn).items():
            rel = ((got - ref) / ref)[sel].abs().max().item()
            assert rel < 1.5e-7, f"{fn} isa {level}: relative error {rel:.3g}"
            assert (got[xd < EXP_LO] == 0).all(), f"{fn} isa {level}: underflow must give 0"
    for level, got in _eval(points, "exp").items():
        assert torch.isinf(got[xd > EXP_HI]).all(), f"isa {level}: overflow must give +inf"
    for fn in ("exp", "exp_nonpositive"):
        for level, got in _eval(SPECIALS, fn).items():
            assert got[1] == 0 and torch.isnan(got[2]), f"{fn} isa {level}: -inf -> 0, NaN -> NaN"
            if fn == "exp":
                assert got[0] == float("inf") and got[7] == float("inf"), f"isa {level}: +inf"


@pytest.mark.parametrize("fn, ref_fn, bound, saturates_at", [
    ("erf", torch.erf, 7e-7, 3.925),  # erf is exactly +-1 from |x| >= 3.925 on
    ("tanh", torch.tanh, 2e-7, None),
])
def test_fast_odd_functions_absolute_error_and_specials(points, fn, ref_fn, bound, saturates_at):
    ref = ref_fn(points.double())
    finite = torch.isfinite(points)
    for level, got in _eval(points, fn).items():
        err = (got - ref)[finite].abs().max().item()
        assert err < bound, f"{fn} isa {level}: absolute error {err:.3g}"
        if saturates_at is not None:
            big = finite & (points.abs() >= saturates_at)
            assert (got[big] == torch.sign(points[big].double())).all(), f"isa {level}: |x| >= {saturates_at} -> +-1"
    for level, got in _eval(SPECIALS, fn).items():
        assert got[0] == 1 and got[1] == -1 and torch.isnan(got[2]), f"{fn} isa {level}: specials"


def test_gelu_erf_and_grad_errors_and_specials(points):
    xd = points.double()
    finite = torch.isfinite(points)
    cdf = 0.5 * (1 + torch.erf(xd / 2**0.5))
    gelu = xd * cdf
    grad = cdf + xd * torch.exp(-0.5 * xd * xd) / (2 * torch.pi) ** 0.5
    for level, got in _eval(points, "gelu_erf").items():
        # 4e-7 of max(1, |v|) for the cdf, plus the fp32 rounding of the result
        bound = 4e-7 * xd.abs().clamp(min=1) + 2.0**-24 * gelu.abs()
        excess = ((got - gelu).abs() - bound)[finite].max().item()
        assert excess <= 0, f"gelu_erf isa {level}: error exceeds the bound by {excess:.3g}"
    for level, got in _eval(points, "gelu_erf_grad").items():
        err = (got - grad)[finite].abs().max().item()
        assert err < 4e-7, f"gelu_erf_grad isa {level}: absolute error {err:.3g}"
    for level, got in _eval(SPECIALS, "gelu_erf_grad").items():
        # NaN stays NaN; +-inf give NaN like torch's gelu_backward; far tails are exact 0 / 1
        assert torch.isnan(got[:3]).all(), f"isa {level}: inf/NaN -> NaN"
        assert got[6] == 0 and got[7] == 1, f"isa {level}: tails"
    for level, got in _eval(SPECIALS, "gelu_erf").items():
        assert torch.isnan(got[2]) and got[0] == float("inf"), f"isa {level}: gelu(NaN), gelu(inf)"
        assert got[6] == 0 and got[7] == SPECIALS[7].double(), f"isa {level}: far tails"


def test_fast_math_eval_rejects_unknown_functions():
    kernels("cpu", "layer_norm")
    with pytest.raises(RuntimeError, match="unknown function"):
        torch.ops.bertperf.fast_math_eval(torch.zeros(3), "cosh")
