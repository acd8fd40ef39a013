"""Memory allocators for bertperf's own processes: keep freed memory for the next use.

A training step, or a data block, allocates and frees the same sizes again and again. glibc's
defaults hand large blocks back to the kernel when they are freed (blocks above the mmap
threshold are separate mappings; the top of the heap is trimmed), so the next step pays for its
memory again in page faults: the kernel zero-fills every 4 KiB page on first touch (the 94 MB
[vocab, hidden] gradient of BERT-base's word embeddings, a fresh mapping every step, made its GEMM
run at 125 instead of 264 GFLOP/s in a microbenchmark). Two remedies, one per kind of process:

* Training (`pretrain`, `finetune`, the benches): tcmalloc (gperftools' minimal build), preloaded
  by re-executing the process once at start (`relaunch_with_tcmalloc`), as torch's own CPU
  launcher does (`torch.backends.xeon.run_cpu --enable_tcmalloc`). Measured with
  `python bench/bench_e2e.py --malloc glibc|tcmalloc --modes eager --precisions fp32 --models
  tiny mini base --no-base512` (both contenders in one process, 2026-11-24), glibc -> tcmalloc
  in seq/s: bertperf tiny 159.9 -> 185.6, mini 59.0 -> 59.9, base 3.80 -> 3.96 (base page faults
  2.57M -> 1.33M); Hugging Face's BERT tiny 28.0 -> 42.6, mini 16.6 -> 21.0, base 2.34 -> 2.74.
  Rejected: glibc with mmap off (M_MMAP_MAX = 0): glibc
  2.36 cannot reuse a freed block for the next 64-byte-aligned request of the same size (torch
  aligns every tensor), so the heap grew by one block per step; jemalloc with freed pages kept
  (dirty_decay_ms:-1, Intel's setting; preloaded by hand into `bench/bench_kernels.py`) is as
  fast, but the kernel benches' varied sizes grew it past 24 GiB (tcmalloc: 6.6 GB), and with its
  default decay it faults more than glibc.
  `BERTPERF_MALLOC=glibc` keeps glibc's defaults.
* The data pipeline (`prepare` and its workers, forked: a re-exec would lose the fork's shared
  tokenizer): `keep_freed_memory()`, a bounded glibc setting: the heap is trimmed only above
  32 MiB free and grows in 16 MiB steps; blocks of 32 MiB or more stay separate mappings, so
  memory stays bounded by the largest live block. Measured on bench_data's 8x input, 1 worker:
  239k -> 47k minor faults, 0.6 -> 0.2 s of system time, the same peak RSS.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

LOG = logging.getLogger(__name__)

ENV_CHOICE = "BERTPERF_MALLOC"  # "tcmalloc" (default) or "glibc"
_ENV_RELAUNCHED = "BERTPERF_MALLOC_RELAUNCHED"  # set in the re-executed process: never loop
_TCMALLOC_PATHS = tuple(f"{d}/libtcmalloc_minimal.so.4" for d in (
    "/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/local/lib"))
# tcmalloc reports every allocation above 1 GiB on stderr by default; tensors that size are normal
_TCMALLOC_ENV = {"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(1 << 40)}

# mallopt parameter numbers (glibc's <malloc.h>)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3


def find_tcmalloc() -> str | None:
    """Path of libtcmalloc_minimal.so.4 (Debian: `apt-get install libtcmalloc-minimal4`, which
    `make setup` does)."""
    for path in _TCMALLOC_PATHS:
        if os.path.exists(path):
            return path
    name = ctypes.util.find_library("tcmalloc_minimal")
    return name if name else None


def active() -> str:
    """The allocator this process runs: "tcmalloc" when it is loaded, else "glibc"."""
    try:
        with open("/proc/self/maps") as f:
            return "tcmalloc" if "libtcmalloc" in f.read() else "glibc"
    except OSError:
        return "glibc"


def relaunch_with_tcmalloc() -> None:
    """Re-execute this process (same PID, same argv and environment) with tcmalloc preloaded, once.
    Call it first thing in a training CLI's `__main__`, before threads, MPI or process groups
    exist. Does nothing when tcmalloc already runs, when `BERTPERF_MALLOC=glibc`, when it was
    tried already, or when tcmalloc is not installed (then it logs a warning). Another value of
    `BERTPERF_MALLOC` ends the process with a one-line error (only entry points call this)."""
    choice = os.environ.get(ENV_CHOICE, "tcmalloc")
    if choice not in ("tcmalloc", "glibc"):
        raise SystemExit(f"bertperf: error: environment variable {ENV_CHOICE}={choice!r}: expected "
                         "'tcmalloc' or 'glibc' (unset means tcmalloc)")
    if choice == "glibc" or active() == "tcmalloc" or os.environ.get(_ENV_RELAUNCHED):
        return
    path = find_tcmalloc()
    if path is None:
        LOG.warning(
            "malloc: tcmalloc not found, training runs on glibc's malloc (steps run 4-16%% slower than on "
            "tcmalloc, base to tiny); install it with `apt-get install libtcmalloc-minimal4` (`make setup` does)")
        return
    env = dict(os.environ)
    env["LD_PRELOAD"] = ":".join(p for p in (path, env.get("LD_PRELOAD", "")) if p)
    for key, value in _TCMALLOC_ENV.items():
        env.setdefault(key, value)
    env[_ENV_RELAUNCHED] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, list(sys.orig_argv), env)


def keep_freed_memory() -> bool:
    """The data pipeline's bounded glibc setting (module docstring). Process-wide, so only the
    `prepare` CLI and its workers call it. Returns False, changing nothing, where malloc is not
    glibc's."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return all(mallopt(param, value) == 1 for param, value in
               ((M_MMAP_THRESHOLD, 32 << 20), (M_TRIM_THRESHOLD, 32 << 20), (M_TOP_PAD, 16 << 20)))


def describe() -> str:
    """One line for logs and bench footers: the allocator this process runs."""
    if active() == "tcmalloc":
        return "malloc: tcmalloc (preloaded, bertperf.utils.malloc)"
    return "malloc: glibc"
