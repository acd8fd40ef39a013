"""The machine a measurement ran on, and the JSON file every bench writes for `bertperf report`.

A bench result file is one JSON object:

    {"bench": "kernels" | "e2e" | "zero_memory" | "data" | "loader" | "profile" | <other>,
     "title": "one line saying what was measured",
     "machine": machine_info(),          # where it ran
     "rows": [{column: value, ...}, ...],  # one dict per table row, same keys in every row
     "notes": ["how to read it", ...]}     # optional

`bertperf report` renders any such file as a table; the kinds it knows (see
`bertperf.report.report.PLOTS`) also get a plot.
"""
from __future__ import annotations

import os
import platform
from typing import Any, Iterable, Mapping

from bertperf.utils.atomic import atomic_write_json


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else platform.processor()."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    """The vector ISA extensions that matter to the kernels (AVX2, AVX-512 parts, AMX), if listed."""
    wanted = ("avx2", "avx512f", "avx512bw", "avx512_bf16", "amx_bf16", "amx_tile", "fma")
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return [w for w in wanted if w in have]
    except OSError:
        pass
    return []


def _version(dist: str) -> str | None:
    """The installed version of distribution `dist` (None if absent), without importing it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """CPU model, usable cores, memory, ISA flags, and the versions of the stack."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    mem_gib = None
    try:
        mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": cores,
        "memory_gib": mem_gib,
        "isa": cpu_flags(),
        "python": platform.python_version(),
    }
    for name in ("torch", "deepspeed", "transformers", "triton"):
        info[name] = _version(name)
    try:
        import torch

        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001
        info["gpu"] = None
    return info


def write_bench_json(path: str | os.PathLike, bench: str, title: str, rows: Iterable[Mapping[str, Any]],
                     notes: Iterable[str] = (), machine: Mapping[str, Any] | None = None) -> None:
    """Write a bench result file (format in the module docstring) atomically."""
    doc = {"bench": bench, "title": title, "machine": dict(machine or machine_info()),
           "rows": [dict(r) for r in rows], "notes": list(notes)}
    atomic_write_json(path, doc, indent=2)
