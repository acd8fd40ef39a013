"""bertperf build: the Python packages, plus bertperf._C (CPU C++ ops) when csrc/ has sources.

The CUDA extension (bertperf._cuda) is built separately by `make cuda-build`, never here: this
file must work on a CPU-only machine with the CPU wheel of torch.
Install with `pip install --no-build-isolation -e .` so the build uses the venv's torch.
"""
import os

from setuptools import find_packages, setup


def _build_config():
    """bertperf/ops/_build.py, loaded by path (importing bertperf here would import torch early)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_bertperf_build", "bertperf/ops/_build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cpu_extension():
    """bertperf._C: every csrc/cpu/*.cpp and csrc/bindings/*.cpp (a new op needs no edit here)."""
    build = _build_config()
    sources = build.cpu_sources()
    if not sources:
        return []
    from torch.utils.cpp_extension import CppExtension

    return [
        CppExtension(
            name="bertperf._C",
            sources=sources,
            include_dirs=[os.path.abspath(d) for d in build.include_dirs()],
            extra_compile_args=build.CPU_CFLAGS,
            extra_link_args=build.CPU_LDFLAGS,
        )
    ]


def cmdclass():
    if not cpu_extension():
        return {}
    from torch.utils.cpp_extension import BuildExtension

    # ninja compiles the translation units in parallel (falls back to serial if it is missing).
    return {"build_ext": BuildExtension.with_options(use_ninja=True)}


setup(
    name="bertperf",
    version="0.1.0",
    description="Fast BERT pre-training and fine-tuning: data, fused kernels, DeepSpeed training",
    python_requires=">=3.10",
    packages=find_packages(include=["bertperf", "bertperf.*"]) + ["bertperf.kernels"],
    # kernels/ (Triton) installs as bertperf.kernels: a top-level `kernels` package exists on PyPI.
    package_dir={"bertperf.kernels": "kernels"},
    ext_modules=cpu_extension(),
    cmdclass=cmdclass(),
    entry_points={"console_scripts": ["bertperf = bertperf.cli:main"]},
)
