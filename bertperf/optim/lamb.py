"""LAMB with NVLAMB semantics: a fused multi-tensor `torch.optim.Optimizer`.

One step, for the parameters that have a gradient (NVIDIA's NVLAMB / apex `FusedLAMB` with
`adam_w_mode=True`, `grad_averaging=True`, `use_nvlamb=True`):

1. Global gradient clipping: ``n = ||concat(all grads of all groups)||_2``;
   ``c = max_grad_norm / n`` if ``max_grad_norm > 0`` and ``n > max_grad_norm`` else ``c = 1``;
   every gradient is used as ``g = c * grad``.
2. Adam moments (fp32): ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2``.
3. Bias correction (``bias_correction=True``, per parameter step count ``t`` starting at 1):
   ``m_hat = m / (1 - b1^t)``, ``v_hat = v / (1 - b2^t)``; without it ``m_hat = m``, ``v_hat = v``.
4. Decoupled weight decay: ``u = m_hat / (sqrt(v_hat) + eps) + weight_decay * p``.
5. Layer-wise trust ratio, per tensor: ``r = ||p|| / ||u||`` if both norms are > 0, else ``r = 1``;
   ``r = 1`` for every tensor of a group with ``layer_adaptation=False``.
6. ``p = p - lr * r * u``.

Param groups: ``lamb_param_groups(model, weight_decay)`` puts biases and normalisation (LayerNorm)
parameters into a group with ``weight_decay=0`` and ``layer_adaptation=False`` (what NVLAMB calls
``exclude_from_layer_adaptation``), all others into a group with the given weight decay and
adaptation on.

Precision: ``exp_avg``/``exp_avg_sq`` are fp32 for every parameter. A bf16 parameter also gets an
fp32 master copy (``state["master_param"]``); the step reads and writes the master and then writes
``p = bf16(master)`` (round to nearest even). Only fp32 and bf16 parameters are accepted.

A non-finite gradient norm is not special-cased (as with ``torch.nn.utils.clip_grad_norm_``, the
step then writes non-finite values): skipping such steps is the loss scaler's job. Gradients must
be dense; parameters without a gradient are skipped and keep their step count.

Backends (``backend=``): ``"torch"`` (``torch._foreach_*`` multi-tensor ops, any device),
``"cpu"`` (the C++/OpenMP kernel of ``bertperf._C``), ``"cuda"`` (the torch-free CUDA kernel),
``"triton"`` (``bertperf.kernels.lamb``) and ``"auto"`` (the fastest one available for the
parameters' device, else ``"torch"``). Every backend reads the gradients once for the global norm,
then makes two passes per tensor (the trust ratio needs ||u|| before p can be written): stage 1
reads p, g, m, v and writes m, v; stage 2 re-reads p, m, v and writes p.

ZeRO: a step is split into separable stages that a partitioned wrapper can drive itself:
``grad_sq_norm()`` (local sum of squared gradients, to all-reduce into the clip coefficient),
``buckets(clip_coef)``, ``update_moments(bucket)`` (updates m, v in place and returns per-tensor
squared norms of p and u: a wrapper sums them over the flat fragments of one tensor and
all-reduces them) and ``apply_update(bucket, step_sizes)`` (``p -= step_size * u`` with u
recomputed from the new moments; ``step_sizes = lr * trust_ratios(...)``). ``step()`` uses the
backend's fused path, which gives the same bits on the cpu backend. `fragment_bucket` builds a
bucket over element ranges of one flat partition (the pieces of model tensors a ZeRO rank holds),
and ``Lamb.partitioned_step`` hands the whole step to such a wrapper:
`bertperf.optim.zero_lamb.attach_zero_lamb` sets it for a DeepSpeed ZeRO-1/2 engine.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Protocol

import torch
from torch import Tensor, nn

from bertperf.utils.errors import BertperfError

log = logging.getLogger(__name__)

BACKENDS = ("auto", "cpu", "cuda", "triton", "torch")
SUPPORTED_DTYPES = (torch.float32, torch.bfloat16)


@dataclass(frozen=True)
class LambScalars:
    """Constants of one step shared by every tensor of a bucket.

    ``inv_bc1 = 1 / (1 - beta1^t)`` and ``inv_bc2 = 1 / (1 - beta2^t)`` (1.0 without bias
    correction); ``clip_coef`` multiplies every gradient (1.0 when clipping is inactive).
    """

    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    inv_bc1: float
    inv_bc2: float
    clip_coef: float
    adapt: bool


@dataclass
class LambBucket:
    """The tensors of one param group at one step count and one dtype: a backend's unit of work.

    ``masters[i]`` is the fp32 tensor the step updates: ``params[i]`` itself for fp32 params, the
    fp32 master copy for bf16 ones (then ``params[i]`` is rewritten from it). ``grads[i]`` has the
    dtype of ``params[i]``; ``exp_avgs``/``exp_avg_sqs`` are fp32. All are contiguous.
    """

    params: list[Tensor]
    masters: list[Tensor]
    grads: list[Tensor]
    exp_avgs: list[Tensor]
    exp_avg_sqs: list[Tensor]
    scalars: LambScalars

    @property
    def has_master(self) -> bool:
        return bool(self.params) and self.params[0].dtype != torch.float32


class LambBackend(Protocol):
    """What a LAMB backend implements; see the module docstring for the math."""

    def grad_sq_norm(self, grads: list[Tensor]) -> float:
        """Sum of squares of all elements of `grads`, accumulated in at least fp32."""

    def update_moments(self, bucket: LambBucket) -> Tensor:
        """Update m, v in place; return float64 [n, 2]: per tensor (||p||^2, ||u||^2)."""

    def apply_update(self, bucket: LambBucket, step_sizes: Tensor) -> None:
        """``master -= step_sizes[i] * u`` with u from the current m, v, master; refresh bf16 params."""

    def fused_step(self, bucket: LambBucket) -> None:
        """`update_moments`, trust ratios and `apply_update` in one go."""


def trust_ratios(sq_norms: Tensor, adapt: bool) -> Tensor:
    """Per-tensor trust ratios from float64 [n, 2] squared norms (||p||^2, ||u||^2): float64 [n].

    ``sqrt(p2 / u2)`` where both are > 0, else 1; all ones when ``adapt`` is False.
    """
    p2, u2 = sq_norms[:, 0], sq_norms[:, 1]
    ones = torch.ones_like(p2)
    if not adapt:
        return ones
    ok = (p2 > 0) & (u2 > 0)
    return torch.where(ok, torch.sqrt(p2 / torch.where(ok, u2, ones)), ones)


def clip_coefficient(grad_sq_norm: float, max_grad_norm: float) -> float:
    """The gradient multiplier of global-norm clipping (1.0 when inactive or disabled)."""
    norm = math.sqrt(grad_sq_norm)
    if max_grad_norm > 0 and norm > max_grad_norm:
        return max_grad_norm / norm
    return 1.0


# torch's CPU fp32 norm accumulates sequentially: its relative error grows with the length (measured
# 2.6e-3 on a 23M-element tensor, 7e-6 on 65K bf16-valued elements). Norms of 1024-element rows
# stay within ~1.5e-7, so the torch backend takes row norms and sums their squares in fp64.
_NORM_ROW = 1024


def chunked_sq_norms(tensors: list[Tensor]) -> Tensor:
    """Per-tensor sums of squares of fp32 tensors: float64 [n] on the CPU, ~1.5e-7 relative."""
    out = []
    for t in tensors:
        flat = t.reshape(-1)
        rows = flat.numel() // _NORM_ROW
        total = torch.zeros((), dtype=torch.float64, device=t.device)
        if rows:
            body = flat[: rows * _NORM_ROW].view(rows, _NORM_ROW)
            total = total + torch.linalg.vector_norm(body, dim=1).double().square().sum()
        if flat.numel() > rows * _NORM_ROW:
            total = total + torch.linalg.vector_norm(flat[rows * _NORM_ROW:]).double().square()
        out.append(total)
    return torch.stack(out).cpu() if out else torch.zeros(0, dtype=torch.float64)


def _as_fp32(tensors: list[Tensor]) -> list[Tensor]:
    return [t if t.dtype == torch.float32 else t.float() for t in tensors]


class TorchLambBackend:
    """``torch._foreach_*`` implementation: one multi-tensor op per elementwise stage."""

    name = "torch"

    def grad_sq_norm(self, grads: list[Tensor]) -> float:
        return float(chunked_sq_norms(_as_fp32(grads)).sum())

    def _moments_and_update(self, b: LambBucket) -> list[Tensor]:
        s = b.scalars
        grads = _as_fp32(b.grads)
        torch._foreach_mul_(b.exp_avgs, s.beta1)
        torch._foreach_add_(b.exp_avgs, grads, alpha=(1.0 - s.beta1) * s.clip_coef)
        torch._foreach_mul_(b.exp_avg_sqs, s.beta2)
        torch._foreach_addcmul_(b.exp_avg_sqs, grads, grads, value=(1.0 - s.beta2) * s.clip_coef**2)
        return self._update(b)

    def _update(self, b: LambBucket) -> list[Tensor]:
        """u = (m * inv_bc1) / (sqrt(v * inv_bc2) + eps) + wd * p, as new tensors."""
        s = b.scalars
        u = torch._foreach_mul(b.exp_avg_sqs, s.inv_bc2)
        torch._foreach_sqrt_(u)
        torch._foreach_add_(u, s.eps)
        torch._foreach_reciprocal_(u)
        torch._foreach_mul_(u, b.exp_avgs)
        if s.inv_bc1 != 1.0:
            torch._foreach_mul_(u, s.inv_bc1)
        if s.weight_decay != 0.0:
            torch._foreach_add_(u, b.masters, alpha=s.weight_decay)
        return u

    def _sq_norms(self, b: LambBucket, u: list[Tensor]) -> Tensor:
        return torch.stack([chunked_sq_norms(b.masters), chunked_sq_norms(u)], dim=1)

    def update_moments(self, bucket: LambBucket) -> Tensor:
        return self._sq_norms(bucket, self._moments_and_update(bucket))

    def _apply(self, b: LambBucket, u: list[Tensor], step_sizes: Tensor) -> None:
        torch._foreach_mul_(u, step_sizes.tolist())
        torch._foreach_sub_(b.masters, u)
        if b.has_master:
            torch._foreach_copy_(b.params, b.masters)

    def apply_update(self, bucket: LambBucket, step_sizes: Tensor) -> None:
        self._apply(bucket, self._update(bucket), step_sizes)

    def fused_step(self, bucket: LambBucket) -> None:
        u = self._moments_and_update(bucket)
        if bucket.scalars.adapt:
            ratios = trust_ratios(self._sq_norms(bucket, u), True)
        else:
            ratios = torch.ones(len(u), dtype=torch.float64)
        self._apply(bucket, u, ratios * bucket.scalars.lr)


class KernelLambBackend:
    """The ``lamb_*`` kernels: ``torch.ops.bertperf`` (the C++/OpenMP kernels for CPU tensors,
    the CUDA kernels for CUDA tensors) or ``bertperf.kernels.lamb`` (Triton), which share names
    and signatures. The fused step is one call over the whole bucket (csrc/cpu/lamb.cpp schedules
    chunks dynamically with no barrier; CUDA and Triton keep the trust ratios on the device)."""

    def __init__(self, name: str, ops: Any) -> None:
        self.name = name
        self.ops = ops

    def grad_sq_norm(self, grads: list[Tensor]) -> float:
        total = 0.0
        for dtype in SUPPORTED_DTYPES:  # the kernel wants one dtype per call
            same = [g for g in grads if g.dtype == dtype]
            if same:
                total += float(self.ops.lamb_sq_norms(same).sum())
        return total

    def update_moments(self, bucket: LambBucket) -> Tensor:
        s = bucket.scalars
        sq = self.ops.lamb_update_moments(
            bucket.masters, bucket.grads, bucket.exp_avgs, bucket.exp_avg_sqs, s.beta1, s.beta2,
            s.clip_coef, s.inv_bc1, s.inv_bc2, s.eps, s.weight_decay,
        )
        return sq.cpu()

    def apply_update(self, bucket: LambBucket, step_sizes: Tensor) -> None:
        s = bucket.scalars
        self.ops.lamb_apply_update(
            bucket.masters, bucket.exp_avgs, bucket.exp_avg_sqs,
            bucket.params if bucket.has_master else [], step_sizes, s.inv_bc1, s.inv_bc2, s.eps,
            s.weight_decay,
        )

    def fused_step(self, bucket: LambBucket) -> None:
        s = bucket.scalars
        self.ops.lamb_step(
            bucket.masters, bucket.grads, bucket.exp_avgs, bucket.exp_avg_sqs,
            bucket.params if bucket.has_master else [], s.beta1, s.beta2, s.clip_coef, s.inv_bc1,
            s.inv_bc2, s.eps, s.weight_decay, s.lr, s.adapt,
        )


def _kernel_backend(name: str, device: torch.device) -> LambBackend | str:
    """The cpu, cuda or triton backend, or why it cannot run on `device`."""
    if name == "torch":
        return TorchLambBackend()
    from bertperf.ops.backend import kernels, unavailable_reason

    reason = unavailable_reason(name, device)
    if reason:
        return reason
    ops = kernels(name, "lamb")
    if not hasattr(ops, "lamb_step"):
        return "this build of bertperf has no lamb kernels (rebuild: pip install --no-build-isolation -e .)"
    return KernelLambBackend(name, ops)


def get_backend(name: str, device: torch.device | str) -> LambBackend:
    """The backend called `name` for tensors on `device` ("auto": the fastest that runs there:
    cuda, triton, torch on CUDA devices; cpu, torch on the CPU). BertperfError if unavailable."""
    device = torch.device(device)
    if name not in BACKENDS:
        raise BertperfError(f"Lamb: unknown backend={name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "auto":
        order = ("cuda", "triton", "torch") if device.type == "cuda" else ("cpu", "torch")
        for candidate in order:
            backend = _kernel_backend(candidate, device)
            if not isinstance(backend, str):
                return backend
            log.debug("Lamb backend %r skipped: %s", candidate, backend)
        raise AssertionError("the torch backend is always available")
    backend = _kernel_backend(name, device)
    if isinstance(backend, str):
        raise BertperfError(f"Lamb: backend={name!r} is not available: {backend}; "
                            "use backend='auto' or 'torch'")
    return backend


def _is_norm_module(module: nn.Module) -> bool:
    norm_types = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)
    return isinstance(module, norm_types) or "norm" in type(module).__name__.lower()


def lamb_param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two param groups for `Lamb`: decayed and adapted weights; biases and norm params.

    A parameter goes to the second group (``weight_decay=0.0``, ``layer_adaptation=False``) when
    its attribute name is ``bias`` or its module is a normalisation layer (``nn.LayerNorm``,
    GroupNorm, BatchNorm, or any class whose name contains "Norm", e.g. a fused LayerNorm).
    Frozen parameters are left out; a tied parameter appears once. Empty groups are omitted.
    """
    decay: list[Tensor] = []
    no_decay: list[Tensor] = []
    seen: set[int] = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            (no_decay if name == "bias" or _is_norm_module(module) else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "layer_adaptation": True},
        {"params": no_decay, "weight_decay": 0.0, "layer_adaptation": False},
    ]
    return [g for g in groups if g["params"]]


def _check_range(name: str, value: float, low: float, high: float, high_open: bool = False) -> None:
    ok = low <= value < high if high_open else low <= value <= high
    if not ok or math.isnan(value):
        bracket = ")" if high_open else "]"
        raise BertperfError(f"Lamb: {name}={value} is out of range [{low}, {high}{bracket}")


class Lamb(torch.optim.Optimizer):
    """LAMB (NVLAMB) with a fused multi-tensor step; see the module docstring for the math.

    Args:
        params: parameters or param groups (e.g. from `lamb_param_groups`). Groups may set
            lr, betas, eps, weight_decay, bias_correction and layer_adaptation.
        lr: learning rate.
        betas: (beta1, beta2) of the Adam moments.
        eps: added to sqrt(v_hat).
        weight_decay: decoupled weight decay, added to the update before the trust ratio.
        bias_correction: divide the moments by (1 - beta^t).
        max_grad_norm: clip all gradients (over all groups) to this global L2 norm; 0 disables.
        layer_adaptation: apply the per-tensor trust ratio (False: ratio 1).
        backend: "auto", "cpu", "cuda", "triton" or "torch".
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.01,
        bias_correction: bool = True,
        max_grad_norm: float = 1.0,
        layer_adaptation: bool = True,
        backend: str = "auto",
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            bias_correction=bias_correction,
            layer_adaptation=layer_adaptation,
        )
        _check_range("max_grad_norm", max_grad_norm, 0.0, math.inf)
        super().__init__(params, defaults)
        self.max_grad_norm = float(max_grad_norm)
        for group in self.param_groups:
            self._check_group(group)
        device = next(p.device for g in self.param_groups for p in g["params"])
        self.backend: LambBackend = get_backend(backend, device)
        self.backend_name: str = getattr(self.backend, "name", backend)
        # set by a partitioning wrapper (bertperf.optim.zero_lamb): step() then delegates to it
        self.partitioned_step: Callable[["Lamb"], None] | None = None

    @staticmethod
    def _check_group(group: dict[str, Any]) -> None:
        _check_range("lr", float(group["lr"]), 0.0, math.inf)
        b1, b2 = group["betas"]
        _check_range("betas[0]", float(b1), 0.0, 1.0, high_open=True)
        _check_range("betas[1]", float(b2), 0.0, 1.0, high_open=True)
        _check_range("eps", float(group["eps"]), 0.0, math.inf)
        _check_range("weight_decay", float(group["weight_decay"]), 0.0, math.inf)
        for p in group["params"]:
            if p.dtype not in SUPPORTED_DTYPES:
                raise BertperfError(
                    f"Lamb: a parameter of shape {tuple(p.shape)} has dtype {p.dtype}; "
                    "only float32 and bfloat16 parameters are supported (cast the model)"
                )

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        if hasattr(self, "backend"):
            self._check_group(self.param_groups[-1])

    # ---- state -------------------------------------------------------------------------------

    def state_for(self, p: Tensor) -> dict[str, Any]:
        """The state of `p`, created (step 0, zero moments, fp32 master for bf16) if missing."""
        return self._state_for(p)

    def _state_for(self, p: Tensor) -> dict[str, Any]:
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32, memory_format=torch.contiguous_format)
            state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32, memory_format=torch.contiguous_format)
            if p.dtype != torch.float32:
                state["master_param"] = p.detach().float().contiguous()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load as torch does, but keep the fp32 state fp32 (torch would cast it to bf16)."""
        super().load_state_dict(state_dict)
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for saved_id, p in zip(saved_ids, params):
            saved = state_dict["state"].get(saved_id)
            if saved is None:
                continue
            for key, value in saved.items():
                if isinstance(value, Tensor) and value.is_floating_point():
                    self.state[p][key] = value.to(device=p.device, dtype=torch.float32, copy=True)

    # ---- the step, in separable stages -------------------------------------------------------

    def _params_with_grad(self) -> list[Tensor]:
        out = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise BertperfError("Lamb: sparse gradients are not supported (use dense embeddings)")
                out.append(p)
        return out

    def grad_sq_norm(self) -> float:
        """Sum of squares of every gradient (all groups): the local part of the global norm."""
        grads = [p.grad.contiguous() for p in self._params_with_grad()]
        return self.backend.grad_sq_norm(grads)

    def buckets(self, clip_coef: float) -> list[LambBucket]:
        """Advance the step count of every parameter with a gradient and group them into buckets.

        A bucket holds the parameters of one group with the same dtype and step count; its
        scalars carry `clip_coef`. Lazily creates the state. Call once per step.
        """
        out: list[LambBucket] = []
        for group in self.param_groups:
            by_key: dict[tuple[torch.dtype, int], LambBucket] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self._state_for(p)
                state["step"] += 1
                key = (p.dtype, state["step"])
                bucket = by_key.get(key)
                if bucket is None:
                    bucket = by_key[key] = LambBucket(
                        [], [], [], [], [], self._scalars(group, state["step"], clip_coef)
                    )
                if not p.is_contiguous():
                    raise BertperfError(
                        f"Lamb: a parameter of shape {tuple(p.shape)} is not contiguous; "
                        "make it contiguous before building the optimizer"
                    )
                bucket.params.append(p)
                bucket.masters.append(state.get("master_param", p))
                bucket.grads.append(p.grad.contiguous())
                bucket.exp_avgs.append(state["exp_avg"])
                bucket.exp_avg_sqs.append(state["exp_avg_sq"])
            out.extend(by_key.values())
        return out

    @staticmethod
    def _scalars(group: dict[str, Any], step: int, clip_coef: float) -> LambScalars:
        b1, b2 = (float(b) for b in group["betas"])
        bc = bool(group["bias_correction"])
        return LambScalars(
            lr=float(group["lr"]),
            beta1=b1,
            beta2=b2,
            eps=float(group["eps"]),
            weight_decay=float(group["weight_decay"]),
            inv_bc1=1.0 / (1.0 - b1**step) if bc else 1.0,
            inv_bc2=1.0 / (1.0 - b2**step) if bc else 1.0,
            clip_coef=clip_coef,
            adapt=bool(group["layer_adaptation"]),
        )

    def fragment_bucket(self, group: dict[str, Any], flat: Tensor, grad: Tensor,
                        spans: list[tuple[int, int]], clip_coef: float) -> LambBucket:
        """A bucket over element ranges of one flat fp32 parameter `flat` of `group` (a ZeRO partition).

        `flat` and `grad` are 1-D fp32 tensors of the same length; `spans` are disjoint
        ``(start, numel)`` ranges, one per model tensor (fragment) the partition holds: the bucket's
        i-th tensors are the views ``x[start:start + numel]`` of `flat`, `grad` and the moments, so
        the stages return and take per-fragment values. Elements outside every span are left
        alone. Advances the step count of `flat` once (creating its state): call once per step.
        """
        if flat.dtype != torch.float32 or flat.dim() != 1 or grad.dtype != torch.float32 or grad.shape != flat.shape:
            raise ValueError(f"fragment_bucket needs a 1-D fp32 partition and an fp32 gradient of its shape, got "
                             f"{flat.dtype} {tuple(flat.shape)} and {grad.dtype} {tuple(grad.shape)}")
        state = self._state_for(flat)
        state["step"] += 1
        bucket = LambBucket([], [], [], [], [], self._scalars(group, state["step"], clip_coef))
        grad = grad.contiguous()
        for start, numel in spans:
            view = flat.narrow(0, start, numel)
            bucket.params.append(view)
            bucket.masters.append(view)
            bucket.grads.append(grad.narrow(0, start, numel))
            bucket.exp_avgs.append(state["exp_avg"].narrow(0, start, numel))
            bucket.exp_avg_sqs.append(state["exp_avg_sq"].narrow(0, start, numel))
        return bucket

    def update_moments(self, bucket: LambBucket) -> Tensor:
        """Stage 1 of a split step: m, v in place; returns float64 [n, 2] (||p||^2, ||u||^2)."""
        return self.backend.update_moments(bucket)

    def apply_update(self, bucket: LambBucket, step_sizes: Tensor) -> None:
        """Stage 2 of a split step: ``p -= step_sizes[i] * u_i`` (step size = lr * trust ratio)."""
        self.backend.apply_update(bucket, step_sizes)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One LAMB step over every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.partitioned_step is not None:
            self.partitioned_step(self)
            return loss
        coef = clip_coefficient(self.grad_sq_norm(), self.max_grad_norm) if self.max_grad_norm > 0 else 1.0
        for bucket in self.buckets(coef):
            self.backend.fused_step(bucket)
        return loss
