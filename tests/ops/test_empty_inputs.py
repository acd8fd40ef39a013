"""Every fused op on an empty input (e.g. the MLM head's rows of a batch with no masked token):
the same empty output and zero parameter gradients on the kernel backend as on the reference.
The C++ bindings refuse empty tensors; the ops' dispatch sends them to the reference."""
import pytest
import torch

from bertperf.ops.bias_dropout_residual import bias_dropout_residual
from bertperf.ops.bias_gelu import bias_gelu
from bertperf.ops.layer_norm import layer_norm
from bertperf.ops.softmax import softmax

H = 7


def _run(op: str, backend: str):
    x = torch.zeros(0, H, requires_grad=True)
    bias = torch.randn(H, requires_grad=True)
    params = [x, bias]
    if op == "bias_gelu":
        y = bias_gelu(x, bias, backend=backend)
    elif op == "layer_norm":
        gamma, beta = torch.ones(H, requires_grad=True), torch.zeros(H, requires_grad=True)
        params += [gamma, beta]
        y = layer_norm(x, gamma, beta, bias, torch.zeros(0, H), backend=backend)
    elif op == "bias_dropout_residual":
        y = bias_dropout_residual(x, bias, torch.zeros(0, H), p=0.1, training=True, seed=3, backend=backend)
    else:
        params = [x]
        y = softmax(x.view(0, 1, 1, H), None, 0.5, p=0.1, training=True, seed=3, backend=backend)
    y.sum().backward()
    return y, [p.grad for p in params]


@pytest.mark.parametrize("op", ["bias_gelu", "layer_norm", "bias_dropout_residual", "softmax"])
def test_empty_input_on_every_backend(op):
    ref, ref_grads = _run(op, "torch")
    out, grads = _run(op, "cpu")
    assert out.shape == ref.shape and out.numel() == 0
    for g, r in zip(grads, ref_grads):
        assert g is not None and g.shape == r.shape
        torch.testing.assert_close(g, r)
        assert not g.any()
