"""DeepSpeed glue: the process's place in the run, thread count, distributed init, the engine.

Launch modes, detected from the environment before anything is initialized:
- `deepspeed --num_gpus N script.py` (or torchrun): RANK, WORLD_SIZE, LOCAL_RANK, MASTER_* are set.
- `mpirun` / `deepspeed --launcher openmpi`: OMPI_COMM_WORLD_* (or PMI_*) are set; DeepSpeed's
  MPI discovery (needs mpi4py) fills in the rest in `init_distributed`.
- `python script.py`: none is set; the process becomes a world of one (MASTER_ADDR 127.0.0.1
  and a free port), so the same code path runs without a launcher.
"""
from __future__ import annotations

import logging
import os
import socket
import sys
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from bertperf.utils.errors import BertperfError

log = logging.getLogger(__name__)

# Set once this process has started process groups (`init_distributed`); read by
# `end_process_after_distributed_run`.
_distributed_started = False

LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK")
# (world size, rank, local rank, local size) variables of Open MPI and of PMI-based MPIs
MPI_VARS = (("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE"),
            ("PMI_SIZE", "PMI_RANK", "MPI_LOCALRANKID", "MPI_LOCALNRANKS"))


@dataclass(frozen=True)
class Placement:
    """This process's rank among `world_size`, and its local rank among `local_size` on the node."""

    rank: int
    world_size: int
    local_rank: int
    local_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for MASTER_PORT)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def detect_placement() -> Placement:
    """Where this process sits, from launcher or MPI variables; a lone process becomes a world of one.

    For a lone process this sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT, so
    `deepspeed.init_distributed` neither needs a launcher nor tries MPI discovery.
    """
    env = os.environ
    if "WORLD_SIZE" in env and "RANK" in env:
        world = int(env["WORLD_SIZE"])
        local_size = int(env.get("LOCAL_WORLD_SIZE", env.get("LOCAL_SIZE", world)))
        return Placement(int(env["RANK"]), world, int(env.get("LOCAL_RANK", 0)), local_size)
    for size_var, rank_var, local_var, local_size_var in MPI_VARS:
        if size_var in env:
            world = int(env[size_var])
            return Placement(int(env.get(rank_var, 0)), world, int(env.get(local_var, 0)),
                             int(env.get(local_size_var, world)))
    env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
    env.setdefault("MASTER_ADDR", "127.0.0.1")
    env.setdefault("MASTER_PORT", str(free_port()))
    return Placement(0, 1, 0, 1)


def set_threads(placement: Placement) -> int:
    """Give each local rank an equal share of the usable cores, unless OMP_NUM_THREADS is set.

    Without this every rank would start one thread per core and the ranks would fight over them.
    Returns the number of intra-op threads in use.
    """
    if "OMP_NUM_THREADS" not in os.environ:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        torch.set_num_threads(max(1, cores // max(1, placement.local_size)))
    return torch.get_num_threads()


def quiet_deepspeed(level: int = logging.WARNING) -> None:
    """Keep DeepSpeed's INFO chatter (config dumps, timers) and torch's deprecation notices off the console."""
    from deepspeed.utils import logger as ds_logger

    ds_logger.setLevel(level)
    warnings.filterwarnings("ignore", message=r".*all_gather_into_tensor.*is deprecated", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r".*reduce_scatter_tensor.*is deprecated", category=FutureWarning)


DEFAULT_TIMEOUT_S = 600.0


def init_distributed(timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """`deepspeed.init_distributed` with gloo on CPU (the accelerator's backend elsewhere), MPI discovery on.

    `timeout_s` bounds every collective: a rank that waits longer for its peers (one hung or gone
    without closing its connections) fails instead of blocking forever. DeepSpeed's default is
    30 minutes; ours is 10, long enough for rank 0 to write a large checkpoint and export while the
    others wait in a barrier. (A peer that dies closes its sockets, which fails the collective at once.)

    DeepSpeed's shared-memory all-reduce op (used only by its inference all-reduce) is switched off:
    building it is a 70-90 s C++ JIT compile on first use that training never benefits from.
    """
    from datetime import timedelta

    import deepspeed
    from deepspeed.accelerator import get_accelerator

    accel = get_accelerator()
    if accel.device_name() == "cpu":
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        backend = "gloo"
    else:
        backend = accel.communication_backend_name()
    if any(v not in os.environ for v in LAUNCHER_VARS):
        try:
            import mpi4py  # noqa: F401  (DeepSpeed's MPI discovery needs it)
        except ImportError:
            raise BertperfError("launched under MPI but mpi4py is not installed: pip install mpi4py "
                                "(and Debian's libopenmpi-dev), or launch with `deepspeed --num_gpus N`") from None
    global _distributed_started
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=True, verbose=False,
                               timeout=timedelta(seconds=timeout_s))
    _distributed_started = True


def initialize(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               lr_scheduler: Any, ds_config: dict[str, Any]) -> Any:
    """`deepspeed.initialize` with a client optimizer (and lr scheduler, if any); returns the engine.

    A bertperf Lamb under ZeRO-1/2 is then made exact (`bertperf.optim.zero_lamb.attach_zero_lamb`).
    """
    import deepspeed

    from bertperf.optim.zero_lamb import attach_zero_lamb

    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=lr_scheduler,
                                           config=ds_config, dist_init_required=False)
    attach_zero_lamb(engine)
    return engine


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown_distributed() -> None:
    """Every rank: wait for the others, then destroy the process group.

    The barrier keeps a rank from leaving while a peer still works; every entry point calls this
    on every rank before it returns. Destroying only unregisters the groups: gloo's worker threads
    run on while DeepSpeed still references the groups, i.e. into interpreter teardown, where a
    rank can still abort ("terminate called without an active exception"): entry points end with
    `end_process_after_distributed_run`, which explains why."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def end_process_after_distributed_run(code: int) -> None:
    """End the process with `code` and without interpreter teardown if it started process groups
    (`init_distributed`); return if it did not. Entry-point scripts (`bertperf/pretrain.py`,
    `bertperf/finetune.py`) call it last, after every output is written; library calls return.

    Why: gloo's worker threads outlive `destroy_process_group` while DeepSpeed still references
    the groups, and such a thread can run Python (it drops the last reference to a collective's
    tensors) during interpreter teardown; CPython then ends it with pthread_exit inside a C++
    destructor, and std::terminate aborts the rank ("terminate called without an active
    exception", exit 250 from the launcher). Traced with gdb on torch 2.13 / DeepSpeed 0.19.8 /
    CPython 3.11: the threads are gloo's `pt_gloo_runloop` workers (destroy, gloo's shutdown and
    abort leave them running; DeepSpeed holds the groups in `deepspeed.utils.groups`, each
    parameter's `_dp_group` and the engine), and the path is runLoop -> ~AsyncWork ->
    TensorImpl::decref_pyobject -> THPVariable_dealloc -> PyEval_RestoreThread. Seen in 2 of 4 fresh-clone test runs of a 2-rank fine-tune, never reproduced in
    51 later runs. Logging handlers, stdout and stderr are flushed first, and MPI is finalized if
    mpi4py initialized it (mpirun reports a rank that exits without MPI_Finalize as a failure);
    atexit handlers do not run.
    """
    if not _distributed_started:
        return
    mpi = sys.modules.get("mpi4py.MPI")  # under mpirun: MPI must be finalized (mpi4py's atexit would)
    if mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized():
        mpi.Finalize()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
