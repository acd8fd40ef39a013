"""tests/ops: the Triton kernels run on CPU tensors under the Triton interpreter.

TRITON_INTERPRET must be set before any @triton.jit function in bertperf.kernels is decorated;
this conftest is imported at collection, before any test imports those modules (they are only
imported lazily, by bertperf.ops.backend.kernels or by the tests themselves).
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
