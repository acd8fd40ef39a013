"""Fake (meta) implementations of the `torch.ops.bertperf.*` ops, for torch.compile.

torch.compile traces with FakeTensors: it needs each custom op's output shapes, dtypes and
devices without running it. Each function below states exactly what the C++ binding
(csrc/bindings/<op>.cpp) allocates: activations come back contiguous in the input's dtype,
per-row statistics and per-feature reductions in the math type (fp64 for fp64 inputs, else
fp32), parameter gradients cast to the parameter's dtype.

`register()` runs once, after the schemas exist (`bertperf.ops.backend` calls it when it
loads the cpu or cuda kernels); it is idempotent.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import Tensor


def _acc(t: Tensor) -> torch.dtype:
    """The kernels' math type for an activation tensor."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _like(x: Tensor) -> Tensor:
    return x.new_empty(x.shape)


def _feature(x: Tensor, dtype: torch.dtype) -> Tensor:
    return x.new_empty((x.shape[-1],), dtype=dtype)


def _layer_norm_fwd(x: Tensor, bias: Tensor | None, residual: Tensor | None, gamma: Tensor,
                    beta: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    stats = x.new_empty(x.shape[:-1], dtype=_acc(x))
    return _like(x), stats, stats.new_empty(stats.shape)


def _layer_norm_bwd(dy: Tensor, x: Tensor, bias: Tensor | None, residual: Tensor | None,
                    gamma: Tensor, mean: Tensor, rstd: Tensor, y: Tensor | None = None,
                    beta: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    dbias = _feature(x, bias.dtype) if bias is not None else None
    return _like(x), _feature(x, gamma.dtype), _feature(x, gamma.dtype), dbias


def _bias_gelu_fwd(x: Tensor, bias: Tensor | None, approximate: str) -> Tensor:
    return _like(x)


def _bias_gelu_bwd(dy: Tensor, x: Tensor, bias: Tensor | None,
                   approximate: str) -> tuple[Tensor, Tensor | None]:
    return _like(x), (_feature(x, bias.dtype) if bias is not None else None)


def _bdr_fwd(x: Tensor, bias: Tensor | None, residual: Tensor, p: float, seed: int) -> Tensor:
    return _like(x)


def _bdr_bwd(dy: Tensor, bias: Tensor | None, p: float, seed: int) -> tuple[Tensor, Tensor | None]:
    return _like(dy), (_feature(dy, bias.dtype) if bias is not None else None)


def _softmax_fwd(x: Tensor, mask: Tensor | None, scale: float, p: float,
                 seed: int) -> tuple[Tensor, Tensor | None]:
    return _like(x), (_like(x) if p > 0.0 else None)


def _softmax_bwd(dy: Tensor, probs: Tensor, scale: float, p: float, seed: int) -> Tensor:
    return _like(probs)


def _cross_entropy_fwd(x: Tensor, bias: Tensor | None, labels: Tensor, scale: float
                       ) -> tuple[Tensor | None, Tensor, Tensor, Tensor, Tensor | None]:
    rows = x.new_empty((x.shape[0],), dtype=_acc(x))
    y = _like(x) if bias is not None else None
    dbias = _feature(x, _acc(x)) if bias is not None else None
    return y, _like(x), rows, x.new_empty((x.shape[0],), dtype=torch.uint8), dbias


def _attention_scores(qkv: Tensor, heads: int) -> Tensor:
    b, s, _ = qkv.shape
    return qkv.new_empty((b, heads, s, s))


def _attention_context(probs: Tensor, qkv: Tensor, heads: int) -> Tensor:
    b, s, three_h = qkv.shape
    return qkv.new_empty((b, s, three_h // 3))


def _attention_context_bwd(dctx: Tensor, probs: Tensor, qkv: Tensor, heads: int) -> tuple[Tensor, Tensor]:
    return _like(probs), _like(qkv)


def _attention_scores_bwd(dscores: Tensor, qkv: Tensor, dqkv: Tensor, heads: int) -> None:
    return None


def _lamb_sq_norms(xs: Sequence[Tensor]) -> Tensor:
    return xs[0].new_empty((len(xs),), dtype=torch.float64)


def _lamb_update_moments(masters, grads, exp_avgs, exp_avg_sqs, beta1, beta2, clip, inv_bc1,
                         inv_bc2, eps, weight_decay) -> Tensor:
    return masters[0].new_empty((len(masters), 2), dtype=torch.float64)


def _lamb_apply_update(masters, exp_avgs, exp_avg_sqs, params, step_sizes, inv_bc1, inv_bc2,
                       eps, weight_decay) -> None:
    return None


def _lamb_step(masters, grads, exp_avgs, exp_avg_sqs, params, beta1, beta2, clip, inv_bc1,
               inv_bc2, eps, weight_decay, lr, adapt) -> None:
    return None


FAKES = {
    "layer_norm_fwd": _layer_norm_fwd,
    "layer_norm_bwd": _layer_norm_bwd,
    "bias_gelu_fwd": _bias_gelu_fwd,
    "bias_gelu_bwd": _bias_gelu_bwd,
    "bias_dropout_residual_fwd": _bdr_fwd,
    "bias_dropout_residual_bwd": _bdr_bwd,
    "softmax_fwd": _softmax_fwd,
    "softmax_bwd": _softmax_bwd,
    "cross_entropy_fwd": _cross_entropy_fwd,
    "attention_scores": _attention_scores,
    "attention_context": _attention_context,
    "attention_context_bwd": _attention_context_bwd,
    "attention_scores_bwd": _attention_scores_bwd,
    "lamb_sq_norms": _lamb_sq_norms,
    "lamb_update_moments": _lamb_update_moments,
    "lamb_apply_update": _lamb_apply_update,
    "lamb_step": _lamb_step,
}


@functools.cache
def register() -> tuple[str, ...]:
    """Registers the fake implementation of every bertperf op whose schema is loaded; returns
    the names registered (an op without a schema, e.g. from an older build, is skipped)."""
    done = []
    for name, fn in FAKES.items():
        if not hasattr(torch.ops.bertperf, name):
            continue
        torch.library.register_fake(f"bertperf::{name}", fn)
        done.append(name)
    return tuple(done)
