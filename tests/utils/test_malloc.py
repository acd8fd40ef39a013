"""bertperf.utils.malloc, each case in a fresh process (allocators are process-wide): the
relaunch onto tcmalloc, and what it buys, measured as the page faults of allocating, touching
and freeing a 96 MiB block again."""
import json
import os
import platform
import subprocess
import sys

import pytest

from bertperf.utils import malloc

PAGES = (96 << 20) // 4096  # pages of one 96 MiB block

SCRIPT = r"""
import json, os, resource, sys
from bertperf.utils import malloc
if sys.argv[1] == "relaunch":
    malloc.relaunch_with_tcmalloc()
elif sys.argv[1] == "bounded":
    assert malloc.keep_freed_memory()
import torch

def step():  # a training step's use of memory: allocate 96 MiB, touch every page, free it
    t = torch.empty(24 << 20)
    t.fill_(1.0)
    del t

step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print(os.getpid(), malloc.active(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, json.dumps(sys.argv[1:]))
"""

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="the allocator settings are for Linux with glibc")


def _run(mode: str, extra_env: dict[str, str] | None = None) -> tuple[list[str], str, int]:
    # a clean start, also when pytest itself runs in a re-executed process
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", malloc.ENV_CHOICE, malloc._ENV_RELAUNCHED)}
    env.update(extra_env or {})
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, mode, "x y"], env=env, stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate()
    assert proc.returncode == 0
    pid, allocator, faults, args = out.strip().split(" ", 3)
    assert int(pid) == proc.pid  # re-executed in place: the parent (a launcher) still waits on the same PID
    return json.loads(args), allocator, int(faults)


def test_tcmalloc_is_installed():
    assert malloc.find_tcmalloc(), "libtcmalloc-minimal4 is missing: `make setup` installs it"


def test_relaunch_runs_on_tcmalloc_and_keeps_freed_memory():
    _, allocator, glibc_faults = _run("plain")
    args, relaunched, tcmalloc_faults = _run("relaunch")
    assert allocator == "glibc" and relaunched == "tcmalloc"
    assert args == ["relaunch", "x y"]  # the same argv, quoting intact
    assert glibc_faults >= 4 * PAGES  # glibc maps and zero-fills the block again for every step
    assert tcmalloc_faults < PAGES // 20  # tcmalloc reuses the pages it has


def test_glibc_choice_and_bad_choice():
    _, allocator, _ = _run("relaunch", {malloc.ENV_CHOICE: "glibc"})
    assert allocator == "glibc"
    env = dict(os.environ, **{malloc.ENV_CHOICE: "jemalloc"})
    proc = subprocess.run([sys.executable, "-c", SCRIPT, "relaunch"], env=env, capture_output=True, text=True)
    assert proc.returncode != 0 and "BERTPERF_MALLOC='jemalloc': expected 'tcmalloc' or 'glibc'" in proc.stderr
    assert "Traceback" not in proc.stderr  # one line for the user


def test_bounded_glibc_setting_still_returns_large_blocks():
    _, allocator, faults = _run("bounded")
    assert allocator == "glibc"
    assert faults >= 4 * PAGES  # blocks of 32 MiB or more stay separate mappings: memory stays bounded
