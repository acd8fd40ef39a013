"""Optimizers: the fused NVLAMB `Lamb` and its param-group helper."""
from bertperf.optim.lamb import Lamb, lamb_param_groups

__all__ = ["Lamb", "lamb_param_groups"]
