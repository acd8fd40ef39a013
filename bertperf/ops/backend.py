"""Kernel backend selection: `auto | cpu | cuda | triton | torch`, resolved explicitly per call.

* `cpu`    C++/OpenMP kernels (`bertperf._C`, prebuilt by setup.py or JIT-built), CPU tensors.
* `cuda`   CUDA kernels (`bertperf._cuda`, `make cuda-build`), CUDA tensors.
* `triton` Triton kernels (`bertperf.kernels`): CUDA tensors, or CPU tensors when the process
           runs the Triton interpreter (`TRITON_INTERPRET=1` set before triton is imported).
* `torch`  the pure-torch reference composite (autograd through eager torch ops).
* `auto`   by device: CUDA tensors -> cuda, else triton, else torch; CPU tensors -> cpu, else
           torch. The choice is logged once per device type. Never triton on the CPU.

Nothing is chosen at import time and no environment variable swaps implementations: the model
passes its `kernel_backend` setting to every op call.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import os
from types import ModuleType
from typing import Any

import torch

from bertperf.utils.errors import BertperfError

log = logging.getLogger(__name__)

BACKENDS = ("auto", "cpu", "cuda", "triton", "torch")

_auto_logged: set[str] = set()
# backends whose kernels are loaded (checked before `_load`, which torch.compile cannot trace)
_ready: set[str] = set()


def _constant_under_compile(fn):
    """What `torch.compiler.assume_constant_result` does (Dynamo runs `fn` eagerly and keeps its
    answer as a constant: these functions import and build modules, which cannot be traced),
    without importing torch._dynamo here: that imports triton, and triton must be imported
    only after a process has chosen TRITON_INTERPRET."""
    fn._dynamo_marked_constant = True
    return fn


def _device_type(device: torch.device | str) -> str:
    return torch.device(device).type


@functools.cache
def _load(backend: str) -> str:
    """Loads a backend's kernels once; returns '' if usable, else the reason it is not."""
    from bertperf.ops import _build, _fake

    try:
        if backend == "cpu":
            _build.load_cpu()
            _fake.register()  # shapes for torch.compile
        elif backend == "cuda":
            if not torch.cuda.is_available():
                return "no CUDA device is available"
            _build.load_cuda()
            _fake.register()
        elif backend == "triton":
            if importlib.util.find_spec("triton") is None:
                return "the `triton` package is not installed"
        return ""
    except Exception as e:  # a failed build or import makes the backend unavailable
        return f"{type(e).__name__}: {e}"


@_constant_under_compile
def _load_constant(backend: str) -> str:
    """`_load`, run eagerly (not traced) under torch.compile."""
    return _load(backend)


def unavailable_reason(backend: str, device: torch.device | str) -> str:
    """'' if `backend` can run on tensors of `device`, else why not (with the fix)."""
    dev = _device_type(device)
    if backend == "torch":
        return ""
    if backend == "cpu" and dev != "cpu":
        return f"backend 'cpu' runs on CPU tensors, got a {dev} tensor"
    if backend == "cuda" and dev != "cuda":
        return f"backend 'cuda' runs on CUDA tensors, got a {dev} tensor"
    if backend == "triton":
        if dev == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            return ("backend 'triton' on CPU tensors needs the Triton interpreter: set "
                    "TRITON_INTERPRET=1 before starting Python")
        if dev not in ("cpu", "cuda"):
            return f"backend 'triton' does not run on {dev} tensors"
    return _load(backend)


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """The concrete backend for `backend` on `device`; raises BertperfError if it cannot run."""
    if backend not in BACKENDS:
        raise BertperfError(
            f"unknown kernel backend {backend!r}: choose one of {', '.join(BACKENDS)} "
            "(setting `kernel_backend`)"
        )
    return _resolve(backend, _device_type(device))


@_constant_under_compile
def _resolve(backend: str, dev: str) -> str:
    if backend != "auto":
        reason = unavailable_reason(backend, dev)
        if reason:
            raise BertperfError(f"kernel backend {backend!r} is unavailable: {reason}; "
                                "use kernel_backend='auto' or 'torch'")
        return backend
    candidates = ("cuda", "triton", "torch") if dev == "cuda" else ("cpu", "torch")
    reasons = []
    for cand in candidates:
        reason = unavailable_reason(cand, dev)
        if not reason:
            if dev not in _auto_logged:
                _auto_logged.add(dev)
                skipped = f" (skipped: {'; '.join(reasons)})" if reasons else ""
                log.info("kernel_backend 'auto' on %s tensors -> %r%s", dev, cand, skipped)
            return cand
        reasons.append(f"{cand}: {reason}")
    raise AssertionError("unreachable: the torch backend is always available")


def kernels(backend: str, op: str) -> Any:
    """The object holding `<op>_fwd` / `<op>_bwd` for a resolved kernel backend.

    cpu and cuda share the schemas in `torch.ops.bertperf` (the dispatcher picks the device);
    triton is the module `bertperf.kernels.<op>` with the same function names and signatures.
    """
    if backend in ("cpu", "cuda"):
        if backend not in _ready:
            reason = _load_constant(backend)
            if reason:
                raise BertperfError(f"kernel backend {backend!r} is unavailable: {reason}")
            _ready.add(backend)
        return torch.ops.bertperf
    if backend == "triton":
        module: ModuleType = importlib.import_module(f"bertperf.kernels.{op}")
        return module
    raise ValueError(f"backend {backend!r} has no kernels (resolve it first)")


def draw_seed() -> int:
    """A dropout seed from torch's default CPU generator (so torch.manual_seed reproduces it)."""
    return int(torch.randint(0, 2**62, (), dtype=torch.int64).item())


def upcast_all(*ts: torch.Tensor | None) -> list[torch.Tensor | None]:
    """Casts tensors to at least fp32 (fp64 stays fp64); None passes through. For references."""
    return [t.to(torch.promote_types(t.dtype, torch.float32)) if t is not None else None for t in ts]
