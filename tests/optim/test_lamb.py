"""bertperf.optim.Lamb against a readable per-tensor reference LAMB, on every backend that runs here.

Tolerance: the reference runs in float64; bertperf computes in fp32 (fp32 state, fp32 master for
bf16 params). Every tensor (params after each of 10 steps; m and v at the end) must satisfy
max|got - want| <= TOL * max|want|, TOL = 1e-6 (a few fp32 ulps; the measured worst case is
3.3e-7, torch and cpu backends). The bf16 parameter must equal the round-to-nearest-even bf16 of its
fp32 master exactly.
"""
from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass

# The Triton backend runs on CPU tensors under the interpreter, which must be on before any
# @triton.jit function is decorated (bertperf.kernels.lamb is imported lazily, after this).
if not __import__("torch").cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch
from torch import nn

from bertperf.optim import Lamb, lamb_param_groups
from bertperf.optim import lamb as lamb_mod
from bertperf.utils.errors import BertperfError

TOL = 1e-6
STEPS = 10

# Shapes: 1-element tensors, odd sizes, one larger than a C++ chunk (so per-tensor norms are
# assembled from several chunks), and one tensor that starts at zero (||p|| = 0 -> ratio 1).
SHAPES = [(1,), (1, 1), (7,), (3, 5), (31, 17), (2, 3, 4), (4099,), (70001,), (129,)]
ZERO_INIT = 8  # index of the (129,) tensor: initialised to zeros, like a bias
ZERO_GRAD = 2  # index of the (7,) tensor: its gradient is always zero
SKIPPED = (3, 4)  # (index, step): this tensor gets no gradient at this step (its step count lags)
TRITON_SHAPES = [(1,), (3, 5), (37,), (2, 3, 4), (130,)]


def available_backends() -> list[str]:
    """The LAMB backends that run on CPU tensors here (torch always; cpu when the C++ extension
    is built; triton under the interpreter)."""
    names = []
    for name in ("torch", "cpu", "triton"):
        try:
            lamb_mod.get_backend(name, "cpu")
            names.append(name)
        except BertperfError:
            pass
    return names


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Run on one torch thread: these tensors are too small to gain from two, and on a loaded
    2-core machine a 2-thread op can wait out another process's time slice. The thread count is
    the subject of test_cpu_step_gives_the_same_bits_..., which sets it itself."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


# --------------------------------------------------------------------------------------------
# The reference: plain per-tensor loops, any dtype.


@dataclass
class Hyper:
    lr: float = 2e-2
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-6
    weight_decay: float = 0.01
    bias_correction: bool = True
    layer_adaptation: bool = True


class ReferenceLamb:
    """LAMB (NVLAMB) written for reading, one tensor at a time, computing in `dtype`."""

    def __init__(self, params: list[torch.Tensor], hypers: list[Hyper], max_grad_norm: float,
                 dtype: torch.dtype = torch.float64) -> None:
        self.params = [p.detach().to(dtype).clone() for p in params]
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        self.steps = [0 for _ in params]
        self.hypers = hypers
        self.max_grad_norm = max_grad_norm
        self.dtype = dtype

    def step(self, grads: list[torch.Tensor | None]) -> None:
        present = [g.to(self.dtype) for g in grads if g is not None]
        global_norm = math.sqrt(sum(float((g * g).sum()) for g in present))
        clip = 1.0
        if self.max_grad_norm > 0 and global_norm > self.max_grad_norm:
            clip = self.max_grad_norm / global_norm
        for i, grad in enumerate(grads):
            if grad is None:
                continue
            h = self.hypers[i]
            beta1, beta2 = h.betas
            self.steps[i] += 1
            t = self.steps[i]
            g = grad.to(self.dtype) * clip
            p, m, v = self.params[i], self.exp_avg[i], self.exp_avg_sq[i]
            m = beta1 * m + (1 - beta1) * g
            v = beta2 * v + (1 - beta2) * g * g
            if h.bias_correction:
                m_hat = m / (1 - beta1**t)
                v_hat = v / (1 - beta2**t)
            else:
                m_hat, v_hat = m, v
            update = m_hat / (torch.sqrt(v_hat) + h.eps) + h.weight_decay * p
            p_norm = float(torch.linalg.vector_norm(p))
            u_norm = float(torch.linalg.vector_norm(update))
            ratio = 1.0
            if h.layer_adaptation and p_norm > 0 and u_norm > 0:
                ratio = p_norm / u_norm
            self.params[i] = p - h.lr * ratio * update
            self.exp_avg[i], self.exp_avg_sq[i] = m, v


# --------------------------------------------------------------------------------------------
# Fixtures of a run: initial parameters and a gradient sequence.


def initial_params(shapes: list[tuple[int, ...]], seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=gen) * 0.5 for s in shapes]
    if len(shapes) > ZERO_INIT:
        params[ZERO_INIT].zero_()
    return params


def grad_sequence(shapes: list[tuple[int, ...]], steps: int, seed: int = 1) -> list[list[torch.Tensor | None]]:
    """Gradients per step. Their scale alternates, so global clipping at max_grad_norm=1 is active
    on even steps (norm ~ 60) and inactive on odd steps (norm ~ 0.06)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for step in range(1, steps + 1):
        scale = 0.2 if step % 2 == 0 else 2e-4
        grads: list[torch.Tensor | None] = [torch.randn(s, generator=gen) * scale for s in shapes]
        if len(shapes) > ZERO_GRAD:
            grads[ZERO_GRAD] = torch.zeros(shapes[ZERO_GRAD])
        if step == SKIPPED[1] and len(shapes) > SKIPPED[0]:
            grads[SKIPPED[0]] = None
        out.append(grads)
    return out


MIXED = "mixed"  # a dtype choice: fp32 for even tensor indices, bf16 for odd ones


def param_dtypes(dtype, n: int) -> list[torch.dtype]:
    if dtype == MIXED:
        return [torch.float32 if i % 2 == 0 else torch.bfloat16 for i in range(n)]
    return [dtype] * n


def build(params0: list[torch.Tensor], dtype, split_groups: bool, hyper: Hyper,
          max_grad_norm: float, backend: str) -> tuple[list[nn.Parameter], Lamb, list[Hyper]]:
    """bertperf Lamb over copies of params0; split_groups puts odd indices in a no-decay,
    no-adaptation group. Returns the params, the optimizer and each tensor's hyperparameters."""
    params = [nn.Parameter(p.clone().to(d)) for p, d in zip(params0, param_dtypes(dtype, len(params0)))]
    base = dict(lr=hyper.lr, betas=hyper.betas, eps=hyper.eps, bias_correction=hyper.bias_correction)
    if split_groups:
        groups = [
            {"params": params[0::2], "weight_decay": hyper.weight_decay, "layer_adaptation": True},
            {"params": params[1::2], "weight_decay": 0.0, "layer_adaptation": False},
        ]
        off = Hyper(hyper.lr, hyper.betas, hyper.eps, 0.0, hyper.bias_correction, False)
        hypers = [hyper if i % 2 == 0 else off for i in range(len(params))]
    else:
        groups = [{"params": params, "weight_decay": hyper.weight_decay,
                   "layer_adaptation": hyper.layer_adaptation}]
        hypers = [hyper] * len(params)
    opt = Lamb(groups, max_grad_norm=max_grad_norm, backend=backend, **base)
    return params, opt, hypers


def set_grads(params: list[nn.Parameter], grads: list[torch.Tensor | None]) -> None:
    for p, g in zip(params, grads):
        p.grad = None if g is None else g.to(p.dtype)


def fp32_values(opt: Lamb, params: list[nn.Parameter]) -> list[torch.Tensor]:
    """What the step computed in fp32: the param itself, or its fp32 master for bf16 params."""
    return [opt.state[p]["master_param"] if p.dtype != torch.float32 else p.detach() for p in params]


def assert_close_scaled(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    """max|got - want| <= TOL * max|want| (exact equality for an all-zero reference)."""
    err = float((got.double() - want).abs().max())
    scale = float(want.abs().max())
    assert err <= TOL * scale, f"{what}: max error {err:.3e} > {TOL} * {scale:.3e}"


def assert_matches_reference(opt: Lamb, params: list[nn.Parameter], ref: ReferenceLamb, step: int) -> None:
    for i, (got, want) in enumerate(zip(fp32_values(opt, params), ref.params)):
        assert_close_scaled(got, want, f"step {step}, tensor {i} {tuple(want.shape)}")
        if params[i].dtype == torch.bfloat16:
            assert torch.equal(params[i].detach(), got.to(torch.bfloat16)), f"bf16 param {i} != bf16(master)"


def run_against_reference(backend: str, shapes, dtype, split_groups, hyper, max_grad_norm) -> None:
    params0 = initial_params(shapes)
    params, opt, hypers = build(params0, dtype, split_groups, hyper, max_grad_norm, backend)
    # The reference starts from exactly what bertperf starts from (bf16-rounded values for bf16).
    ref = ReferenceLamb([p.detach().float() for p in params], hypers, max_grad_norm)
    for step, grads in enumerate(grad_sequence(shapes, STEPS), start=1):
        grads = [None if g is None else g.to(p.dtype) for g, p in zip(grads, params)]  # bf16 for bf16
        set_grads(params, grads)
        opt.step()
        ref.step(grads)
        assert_matches_reference(opt, params, ref, step)
    for i, p in enumerate(params):
        state = opt.state[p]
        assert state["exp_avg"].dtype == torch.float32 and state["exp_avg_sq"].dtype == torch.float32
        assert state["step"] == ref.steps[i]
        assert_close_scaled(state["exp_avg"], ref.exp_avg[i], f"exp_avg {i}")
        assert_close_scaled(state["exp_avg_sq"], ref.exp_avg_sq[i], f"exp_avg_sq {i}")


# --------------------------------------------------------------------------------------------
# Tests


@pytest.mark.parametrize("backend", [b for b in available_backends() if b != "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize(
    "split_groups,bias_correction,max_grad_norm",
    [(True, True, 1.0), (False, True, 1.0), (True, False, 1.0), (True, True, 0.0), (False, False, 0.0)],
    ids=["groups-bc-clip", "onegroup-bc-clip", "groups-nobc-clip", "groups-bc-noclip", "onegroup-nobc-noclip"],
)
def test_matches_reference(backend, dtype, split_groups, bias_correction, max_grad_norm):
    hyper = Hyper(bias_correction=bias_correction)
    run_against_reference(backend, SHAPES, dtype, split_groups, hyper, max_grad_norm)


@pytest.mark.parametrize("backend", [b for b in available_backends() if b != "triton"])
def test_matches_reference_with_fp32_and_bf16_params_in_one_group(backend):
    run_against_reference(backend, SHAPES, MIXED, False, Hyper(), 1.0)


@pytest.mark.parametrize("backend", [b for b in available_backends() if b != "triton"])
def test_matches_reference_without_adaptation_or_decay(backend):
    hyper = Hyper(weight_decay=0.0, layer_adaptation=False, betas=(0.8, 0.95), eps=1e-8)
    run_against_reference(backend, SHAPES, torch.float32, False, hyper, 1.0)


@pytest.mark.parametrize("backend", available_backends())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_state_dict_round_trip_continues_identically(backend, dtype):
    shapes = SHAPES if backend != "triton" else TRITON_SHAPES
    params0 = initial_params(shapes)
    grads = grad_sequence(shapes, STEPS)
    params, opt, _ = build(params0, dtype, True, Hyper(), 1.0, backend)
    for g in grads[:4]:
        set_grads(params, g)
        opt.step()
    buffer = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "params": [p.detach().clone() for p in params]}, buffer)
    for g in grads[4:]:
        set_grads(params, g)
        opt.step()

    buffer.seek(0)
    saved = torch.load(buffer)
    params2, opt2, _ = build(params0, dtype, True, Hyper(), 1.0, backend)
    with torch.no_grad():
        for p, v in zip(params2, saved["params"]):
            p.copy_(v)
    opt2.load_state_dict(saved["opt"])
    for p in params2:
        for key in ("exp_avg", "exp_avg_sq", "master_param"):
            if key in opt2.state[p]:
                assert opt2.state[p][key].dtype == torch.float32, f"{key} was not kept in fp32"
    for g in grads[4:]:
        set_grads(params2, g)
        opt2.step()
    for p, p2 in zip(params, params2):
        assert torch.equal(p.detach(), p2.detach())
        for key, value in opt.state[p].items():
            other = opt2.state[p2][key]
            assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other


@pytest.mark.parametrize("backend", available_backends())
def test_split_stages_equal_fused_step(backend):
    """The ZeRO-facing path (grad_sq_norm, buckets, update_moments, trust ratios, apply_update)
    gives the fused step's result."""
    shapes = SHAPES if backend != "triton" else TRITON_SHAPES
    params0 = initial_params(shapes)
    fused_params, fused, _ = build(params0, torch.float32, True, Hyper(), 1.0, backend)
    split_params, split, _ = build(params0, torch.float32, True, Hyper(), 1.0, backend)
    for grads in grad_sequence(shapes, 3):
        set_grads(fused_params, grads)
        fused.step()
        set_grads(split_params, grads)
        coef = lamb_mod.clip_coefficient(split.grad_sq_norm(), split.max_grad_norm)
        with torch.no_grad():
            for bucket in split.buckets(coef):
                sq = split.update_moments(bucket)
                assert sq.shape == (len(bucket.params), 2) and sq.dtype == torch.float64
                ratios = lamb_mod.trust_ratios(sq, bucket.scalars.adapt)
                split.apply_update(bucket, ratios * bucket.scalars.lr)
    for a, b in zip(fused_params, split_params):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-6, atol=1e-7)


def test_triton_matches_reference_under_interpreter(monkeypatch):
    if "triton" not in available_backends():
        pytest.fail("the triton LAMB backend is not importable")
    from bertperf.kernels import lamb as klamb

    monkeypatch.setattr(klamb, "BLOCK", 64)  # several programs per tensor on tiny shapes
    for dtype in (torch.float32, torch.bfloat16):
        run_against_reference("triton", TRITON_SHAPES, dtype, True, Hyper(), 1.0)


# Tensors of many 16K-element chunks (and tiny ones between them), so two threads of the C++
# fused step interleave chunks of one tensor and run stage 1 of one tensor while another's
# stage 2 is pending.
BIG_SHAPES = [(600_001,), (450_000,), (7,), (1,), (700_000,), (3, 5)]


def run_steps(backend: str, shapes, dtype, steps: int) -> tuple[list[nn.Parameter], Lamb]:
    params, opt, _ = build(initial_params(shapes), dtype, True, Hyper(), 1.0, backend)
    for grads in grad_sequence(shapes, steps):
        set_grads(params, grads)
        opt.step()
    return params, opt


def needs_cpu_backend() -> None:
    if "cpu" not in available_backends():
        pytest.fail("the C++ LAMB backend is not built: run `pip install --no-build-isolation -e .`")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_cpu_step_gives_the_same_bits_on_1_and_2_threads_and_matches_reference(dtype):
    """The fused C++ step over many chunks: same bits with 1 and 2 threads, and the reference."""
    needs_cpu_backend()
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one, opt_one = run_steps("cpu", BIG_SHAPES, dtype, 4)
        torch.set_num_threads(2)
        two, opt_two = run_steps("cpu", BIG_SHAPES, dtype, 4)
    finally:
        torch.set_num_threads(saved)
    for a, b in zip(fp32_values(opt_one, one), fp32_values(opt_two, two)):
        assert torch.equal(a, b)
    params0 = initial_params(BIG_SHAPES)
    _, _, hypers = build(params0, dtype, True, Hyper(), 1.0, "torch")
    ref = ReferenceLamb([p.to(dtype).float() for p in params0], hypers, 1.0)
    for grads in grad_sequence(BIG_SHAPES, 4):
        ref.step([None if g is None else g.to(dtype) for g in grads])
    assert_matches_reference(opt_two, two, ref, 4)


@pytest.mark.parametrize("level", [1, 3, 4], ids=["baseline", "avx2", "avx512"])
def test_cpu_every_isa_variant_matches_reference(level):
    """Each compiled ISA variant of the C++ loops (levels the CPU lacks are clamped)."""
    needs_cpu_backend()
    saved = torch.ops.bertperf.cpu_isa(0)
    try:
        torch.ops.bertperf.cpu_isa(level)
        run_against_reference("cpu", SHAPES, torch.bfloat16, True, Hyper(), 1.0)
    finally:
        torch.ops.bertperf.cpu_isa(saved)


@pytest.mark.parametrize("backend", available_backends())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, MIXED], ids=["fp32", "bf16", "mixed"])
def test_grad_sq_norm_is_accurate(backend, dtype):
    shapes = SHAPES if backend != "triton" else TRITON_SHAPES
    params, opt, _ = build(initial_params(shapes), dtype, True, Hyper(), 1.0, backend)
    set_grads(params, grad_sequence(shapes, 2)[1])
    grads = [p.grad for p in params if p.grad is not None]
    exact = sum(float(g.double().square().sum()) for g in grads)
    assert abs(opt.grad_sq_norm() / exact - 1) < 2e-7


def test_cpu_kernel_rejects_mismatched_lists():
    needs_cpu_backend()
    p, m, v = torch.zeros(5), torch.zeros(5), torch.zeros(4)
    with pytest.raises(RuntimeError, match=r"exp_avg_sqs\[0\]. has 4 elements"):
        torch.ops.bertperf.lamb_update_moments([p], [torch.ones(5)], [m], [v], 0.9, 0.999, 1.0,
                                               1.0, 1.0, 1e-6, 0.0)
    with pytest.raises(RuntimeError, match=r"grads.*bfloat16"):
        torch.ops.bertperf.lamb_step([p], [torch.ones(5, dtype=torch.float16)], [m], [m], [], 0.9,
                                     0.999, 1.0, 1.0, 1.0, 1e-6, 0.0, 1e-3, True)


def test_auto_backend_is_fastest_available_on_cpu():
    opt = Lamb([nn.Parameter(torch.ones(3))], backend="auto")
    expected = "cpu" if "cpu" in available_backends() else "torch"
    assert opt.backend_name == expected


class FusedLayerNorm(nn.Module):
    """A stand-in for a custom LayerNorm module that is not an nn.LayerNorm."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.bias = nn.Parameter(torch.zeros(n))


class TinyBert(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(11, 4)
        self.embed_norm = nn.LayerNorm(4)
        self.dense = nn.Linear(4, 4)
        self.norm = FusedLayerNorm(4)
        self.decoder = nn.Linear(4, 11)
        self.decoder.weight = self.embed.weight  # tied
        self.frozen = nn.Linear(4, 4, bias=False)
        self.frozen.weight.requires_grad_(False)


def test_param_groups_exclude_bias_and_layernorm():
    model = TinyBert()
    groups = lamb_param_groups(model, weight_decay=0.01)
    decay, no_decay = ({id(p) for p in g["params"]} for g in groups)
    assert groups[0]["weight_decay"] == 0.01 and groups[0]["layer_adaptation"] is True
    assert groups[1]["weight_decay"] == 0.0 and groups[1]["layer_adaptation"] is False
    assert decay == {id(model.embed.weight), id(model.dense.weight)}
    assert no_decay == {id(p) for p in (model.embed_norm.weight, model.embed_norm.bias, model.dense.bias,
                                          model.norm.weight, model.norm.bias, model.decoder.bias)}
    opt = Lamb(groups, backend="torch")  # torch accepts the groups
    assert len(opt.param_groups) == 2


def test_user_errors_name_the_field():
    p = nn.Parameter(torch.ones(3))
    with pytest.raises(BertperfError, match="backend"):
        Lamb([p], backend="gpu")
    with pytest.raises(BertperfError, match="betas"):
        Lamb([p], betas=(0.9, 1.0))
    with pytest.raises(BertperfError, match="max_grad_norm"):
        Lamb([p], max_grad_norm=-1.0)
    with pytest.raises(BertperfError, match="float16"):
        Lamb([nn.Parameter(torch.ones(3, dtype=torch.float16))])
    if "cuda" not in available_backends():
        with pytest.raises(BertperfError, match="not available"):
            Lamb([p], backend="cuda")
