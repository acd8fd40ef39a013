"""Backend resolution (explicit, `auto` logged once, clear errors) and the build plumbing."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from bertperf.ops import _build, backend
from bertperf.utils.errors import BertperfError


def test_explicit_backends_resolve_to_themselves():
    assert backend.resolve_backend("cpu", "cpu") == "cpu"
    assert backend.resolve_backend("torch", "cpu") == "torch"
    assert backend.resolve_backend("triton", "cpu") == "triton"  # TRITON_INTERPRET=1 in tests/ops


def test_auto_on_cpu_picks_the_cpu_kernels_and_logs_once(caplog):
    backend._auto_logged.discard("cpu")
    with caplog.at_level(logging.INFO, logger="bertperf.ops.backend"):
        assert backend.resolve_backend("auto", torch.device("cpu")) == "cpu"
        assert backend.resolve_backend("auto", "cpu") == "cpu"
    lines = [r.getMessage() for r in caplog.records if "kernel_backend 'auto'" in r.getMessage()]
    assert lines == ["kernel_backend 'auto' on cpu tensors -> 'cpu'"]


def test_unknown_and_unavailable_backends_raise_with_the_fix():
    with pytest.raises(BertperfError, match="unknown kernel backend 'cudnn'.*auto, cpu, cuda, triton, torch"):
        backend.resolve_backend("cudnn", "cpu")
    with pytest.raises(BertperfError, match="backend 'cuda' runs on CUDA tensors"):
        backend.resolve_backend("cuda", "cpu")


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert "TRITON_INTERPRET=1" in backend.unavailable_reason("triton", "cpu")
    with pytest.raises(BertperfError, match="TRITON_INTERPRET=1"):
        backend.resolve_backend("triton", "cpu")


def test_every_op_is_built_from_all_three_sources(repo_dir: Path):
    cpu = _build.cpu_sources(repo_dir)
    cuda = _build.cuda_sources(repo_dir)
    for op in ("layer_norm", "bias_gelu", "bias_dropout_residual", "softmax"):
        assert (repo_dir / "csrc/include/bertperf" / f"{op}.h").exists()
        assert f"csrc/cpu/{op}.cpp" in cpu and f"csrc/bindings/{op}.cpp" in cpu
        assert f"csrc/cuda/{op}.cu" in cuda and f"csrc/bindings/{op}.cpp" in cuda
        assert (repo_dir / "kernels" / f"{op}.py").exists()
    for op in ("layer_norm_fwd", "layer_norm_bwd", "bias_gelu_fwd", "bias_gelu_bwd", "softmax_fwd",
               "softmax_bwd", "bias_dropout_residual_fwd", "bias_dropout_residual_bwd"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"bertperf::{op}", "CPU"), op


def test_jit_stubs_have_unique_names_and_track_edits(tmp_path, monkeypatch, repo_dir: Path):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    src = tmp_path / "cpu" / "op.cpp"
    src.parent.mkdir()
    src.write_text("int a;\n")
    other = tmp_path / "bindings" / "op.cpp"
    other.parent.mkdir()
    other.write_text("int b;\n")
    stubs = _build._jit_sources([str(src), str(other)], "t")
    assert [Path(s).name for s in stubs] == ["cpu__op.cpp", "bindings__op.cpp"]
    assert f'#include "{src.resolve()}"' in Path(stubs[0]).read_text()
    before = Path(stubs[0]).read_text()
    src.write_text("int a2;\n")
    assert Path(_build._jit_sources([str(src)], "t")[0]).read_text() != before
