"""Memory allocators for bertperf's own processes: keep freed memory for the next use.

A training step, or a data block, allocates and frees the same sizes again and again. glibc's
defaults hand large blocks back to the kernel when they are freed (blocks above the mmap
threshold are separate mappings; the top of the heap is trimmed), so the next step pays for its
memory again in page faults: the kernel zero-fills every 4 KiB page on first touch. Measured on
this repo's bench (fp32, batch 8 x 128, 2 threads, `bench/bench_e2e.py --malloc glibc|jemalloc`):
BERT-base training takes ~3.6M faults in 40 s under glibc; the [vocab, hidden] gradient of the
word embeddings alone (94 MB, a fresh mapping every step) makes its GEMM run at 125 instead of
264 GFLOP/s. Two remedies, each for one kind of process:

* Training (`pretrain`, `finetune`, the benches): jemalloc, preloaded by re-executing the process
  once at start (`relaunch_with_jemalloc`), with freed pages kept (`JEMALLOC_CONF`). This is what
  torch's own CPU launcher (`torch.backends.xeon.run_cpu --enable_jemalloc`) and Intel's tuning
  guide do. Measured: base fp32 3.42 -> 3.92 seq/s, and Hugging Face's BERT in the same process
  2.02 -> 2.61. glibc alone cannot do it here: with mmap off (M_MMAP_MAX = 0) glibc 2.36 cannot
  reuse a freed block for the next 64-byte-aligned request of the same size (torch aligns every
  tensor), so the heap grows by one block per step (tests/utils/test_malloc.py shows both).
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

ENV_CHOICE = "BERTPERF_MALLOC"  # "jemalloc" (default) or "glibc"
_ENV_RELAUNCHED = "BERTPERF_MALLOC_RELAUNCHED"  # set in the re-executed process: never loop
# Freed pages are kept (no decay) and large blocks get their own extents, reused by size class.
JEMALLOC_CONF = "oversize_threshold:1,background_thread:true,metadata_thp:auto,dirty_decay_ms:-1,muzzy_decay_ms:-1"
_JEMALLOC_PATHS = ("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
                   "/usr/lib64/libjemalloc.so.2", "/usr/local/lib/libjemalloc.so.2")

# mallopt parameter numbers (glibc's <malloc.h>)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3


def find_jemalloc() -> str | None:
    """Path of libjemalloc.so.2 (Debian: `apt-get install libjemalloc2`, which `make setup` does)."""
    for path in _JEMALLOC_PATHS:
        if os.path.exists(path):
            return path
    name = ctypes.util.find_library("jemalloc")
    return name if name else None


def active() -> str:
    """The allocator this process runs: "jemalloc" when it is loaded, else "glibc"."""
    try:
        with open("/proc/self/maps") as f:
            return "jemalloc" if "libjemalloc" in f.read() else "glibc"
    except OSError:
        return "glibc"


def relaunch_with_jemalloc() -> None:
    """Re-execute this process (same PID, same argv and environment) with jemalloc preloaded, once.
    Call it first thing in a training CLI's `__main__`, before threads, MPI or process groups
    exist. Does nothing when jemalloc already runs, when `BERTPERF_MALLOC=glibc`, when it was
    tried already, or when jemalloc is not installed (then it logs a warning once)."""
    choice = os.environ.get(ENV_CHOICE, "jemalloc")
    if choice not in ("jemalloc", "glibc"):
        raise ValueError(f"{ENV_CHOICE}={choice!r}: expected 'jemalloc' or 'glibc' (unset means jemalloc)")
    if choice == "glibc" or active() == "jemalloc" or os.environ.get(_ENV_RELAUNCHED):
        return
    path = find_jemalloc()
    if path is None:
        logging.getLogger(__name__).warning(
            "malloc: jemalloc not found, training runs on glibc's malloc (page faults cost ~10%% of a "
            "BERT-base step); install it with `apt-get install libjemalloc2` (`make setup` does)")
        return
    env = dict(os.environ)
    env["LD_PRELOAD"] = ":".join(p for p in (path, env.get("LD_PRELOAD", "")) if p)
    env.setdefault("MALLOC_CONF", JEMALLOC_CONF)
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
    if active() == "jemalloc":
        return f"malloc: jemalloc (preloaded; MALLOC_CONF={os.environ.get('MALLOC_CONF', '')})"
    return "malloc: glibc"
