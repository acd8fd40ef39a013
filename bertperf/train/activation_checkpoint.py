"""Activation checkpointing per encoder layer (`pretrain.py --checkpoint_activations`).

Each `BertLayer` of `model.bert.layers` keeps only its input for the backward pass and recomputes
its internals (Q/K/V, attention probabilities, FFN intermediate, dropout masks) when the gradient
reaches it, with `torch.utils.checkpoint.checkpoint(use_reentrant=False, preserve_rng_state=True)`:
the recomputation replays the same dropout masks, so losses and gradients equal those of the
plain model. The layer's `forward` is wrapped on the instance, so parameter names, state dicts and
checkpoints are unchanged. Under `torch.no_grad()` (evaluation) the plain forward runs.

Saving: per layer and sequence the plain forward keeps roughly 20 [S, h]-sized tensors plus the
attention probabilities and dropout masks [A, S, S] and the [S, I] FFN activations; checkpointed,
one [S, h] input per layer stays. Measured in bench/bench_activation_memory.py.
"""
from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

_MARK = "_bertperf_checkpointed"


def _checkpointed_forward(forward: Any, *args: Any, **kwargs: Any) -> Any:
    if not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    return checkpoint(forward, *args, use_reentrant=False, preserve_rng_state=True, **kwargs)


def checkpoint_encoder_layers(model: nn.Module) -> int:
    """Wrap the forward of every encoder layer of `model` (a BertForPreTraining, a BertModel or any
    module with `.bert.layers` or `.layers`) with activation checkpointing. Idempotent; returns the
    number of layers wrapped."""
    encoder = getattr(model, "bert", model)
    layers = getattr(encoder, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise TypeError(f"{type(model).__name__} has no encoder layers (.bert.layers or .layers) to checkpoint")
    for layer in layers:
        if not getattr(layer, _MARK, False):
            layer.forward = functools.partial(_checkpointed_forward, layer.forward)  # type: ignore[method-assign]
            setattr(layer, _MARK, True)
    return len(layers)
