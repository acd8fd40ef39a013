"""bertperf build: the Python packages, plus bertperf._C (CPU C++ ops) when csrc/ has sources.

The CUDA extension (bertperf._cuda) is built separately by `make cuda-build`, never here: this
file must work on a CPU-only machine with the CPU wheel of torch.
Install with `pip install --no-build-isolation -e .` so the build uses the venv's torch.
"""
import glob
import os

from setuptools import find_packages, setup


def cpu_extension():
    sources = sorted(glob.glob("csrc/cpu/*.cpp") + glob.glob("csrc/bindings/*.cpp"))
    if not sources:
        return []
    from torch.utils.cpp_extension import CppExtension

    return [
        CppExtension(
            name="bertperf._C",
            sources=sources,
            include_dirs=[os.path.abspath("csrc/include")],
            extra_compile_args=["-O3", "-fopenmp", "-std=c++17"],
            extra_link_args=["-fopenmp"],
        )
    ]


def cmdclass():
    if not cpu_extension():
        return {}
    from torch.utils.cpp_extension import BuildExtension

    return {"build_ext": BuildExtension.with_options(use_ninja=False)}


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
