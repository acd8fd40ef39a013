"""Faults during training: non-finite losses, lost ranks, and the one test-only fault injection.

Non-finite loss (NaN or Inf). Each rank notes whether any micro-batch loss of the current step is
non-finite; before the optimizer step the flag is all-reduced (MAX), so every rank takes the same
decision. A bad step is *skipped*: the client optimizer's and the LR scheduler's `step()` are
no-ops (`StepGate`), so the weights, the optimizer state (moments, step count) and the learning
rate stay exactly as they were; the gradients are discarded as usual. (DeepSpeed's ZeRO-1/2
wrapper notices non-finite gradients itself and skips the same way, as it does for an fp16
overflow; the gate makes every configuration behave alike.) The step still counts: the data
position and the step number advance. `max_bad_steps` bad steps in a row end the run with a
message (`TooManyBadSteps`, raised identically on every rank).

Lost rank. `PeerTable` holds every rank's host and pid (one all-gather at start). When a
collective fails, or the launcher sends SIGTERM because a rank died (deepspeed's launcher does so
within about a second, then SIGKILLs after 30 s), `lost_ranks` finds the ranks on this host whose
process is gone (or a zombie) and the run stops with one line naming them, instead of a traceback
or a hang. A rank on another host cannot be probed: the message then says a remote rank failed.
Collectives are also bounded by the process-group timeout (`engine.init_distributed(timeout_s)`).

Test-only injection, read here and nowhere else: BERTPERF_TEST_BAD_LOSS="STEP[=nan|inf][@RANK],..."
multiplies the first micro-batch loss of optimizer step STEP (1-based, counting from the start
of training) on rank RANK (default 0) by NaN (default) or Inf, before the backward pass, so the
gradients are non-finite as well. Unset in normal runs.
"""
from __future__ import annotations

import logging
import math
import os
import signal
import socket
import sys
import time
import types
from dataclasses import dataclass
from typing import Any, Callable

import torch

from bertperf.utils.errors import BertperfError

log = logging.getLogger(__name__)

BAD_LOSS_ENV = "BERTPERF_TEST_BAD_LOSS"


# ---------------------------------------------------------------------------------------------- non-finite loss


class TooManyBadSteps(BertperfError):
    """`max_bad_steps` optimizer steps in a row had a non-finite loss. Raised on every rank alike
    (the decision is all-reduced), so only rank 0 needs to report it."""


def injected_bad_losses(rank: int, env: dict[str, str] | None = None) -> dict[int, float]:
    """{step: factor} of the test-only injection for this rank (see the module docstring)."""
    spec = (os.environ if env is None else env).get(BAD_LOSS_ENV, "").strip()
    out: dict[int, float] = {}
    for item in filter(None, (x.strip() for x in spec.split(","))):
        item, _, target = item.partition("@")
        step, _, kind = item.partition("=")
        try:
            step_no, target_rank, value = int(step), int(target or 0), float(kind or "nan")
        except ValueError:
            raise BertperfError(f"{BAD_LOSS_ENV}={spec!r}: expected STEP[=nan|inf][@RANK],...") from None
        if math.isfinite(value):
            raise BertperfError(f"{BAD_LOSS_ENV}={spec!r}: the factor must be nan or inf, got {kind}")
        if target_rank == rank:
            out[step_no] = value
    return out


class StepGate:
    """Turns `optimizer.step()` into a no-op while `skip` is True, and gives a scheduler proxy
    (`scheduler(...)`) whose `step()` is gated the same way.

    Wraps the client optimizer instance (the object handed to `deepspeed.initialize`), which
    DeepSpeed's wrappers for ZeRO-1/2/3 and bf16 call after their own gradient bookkeeping: the
    fp32 masters they copy back into the model are then unchanged, so the model is too. The
    scheduler is proxied rather than patched because its `state_dict()` pickles its `__dict__`.
    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.skip = False
        self.skipped_calls = 0
        inner = optimizer.step

        def step(opt: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> Any:
            if self.skip:
                self.skipped_calls += 1
                return None
            return inner(*args, **kwargs)

        # a bound method, as torch's LR schedulers expect when they wrap optimizer.step themselves
        optimizer.step = types.MethodType(step, optimizer)  # type: ignore[method-assign]

    def scheduler(self, scheduler: Any) -> Any:
        """`scheduler` behind a proxy whose step() does nothing while `skip` is set (None stays None)."""
        return None if scheduler is None else GatedScheduler(scheduler, self)


class GatedScheduler:
    """An LR scheduler whose `step()` obeys a `StepGate`; everything else is the wrapped scheduler's
    (state_dict, load_state_dict, get_last_lr, ...). Deliberately not callable: DeepSpeed would
    take a callable for a scheduler factory."""

    def __init__(self, inner: Any, gate: StepGate) -> None:
        self._inner = inner
        self._gate = gate

    def step(self, *args: Any, **kwargs: Any) -> None:
        if not self._gate.skip:
            self._inner.step(*args, **kwargs)

    def state_dict(self) -> dict[str, Any]:
        return self._inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._inner.load_state_dict(state)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class NonFiniteGuard:
    """Counts non-finite losses and decides, collectively, whether an optimizer step is skipped."""

    def __init__(self, max_bad_steps: int, world_size: int, skipped_total: int = 0) -> None:
        self.max_bad_steps = max_bad_steps
        self.world_size = world_size
        self.skipped_total = skipped_total
        self.in_a_row = 0
        self._bad_now = False
        self._worst = 0.0

    def observe(self, loss: torch.Tensor) -> None:
        """Record one micro-batch loss of the current step."""
        value = float(loss.detach())
        if not math.isfinite(value):
            self._bad_now = True
            self._worst = value

    def step_is_bad(self, step: int) -> bool:
        """Call once per optimizer step, before it is taken, on every rank (a collective when
        world_size > 1). True when any rank saw a non-finite loss in this step; raises
        TooManyBadSteps at the `max_bad_steps`-th bad step in a row."""
        flag = 1.0 if self._bad_now else 0.0
        if self.world_size > 1:
            import torch.distributed as dist

            t = torch.tensor([flag])
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flag = float(t.item())
        worst = self._worst
        self._bad_now, self._worst = False, 0.0
        if flag == 0.0:
            self.in_a_row = 0
            return False
        self.in_a_row += 1
        self.skipped_total += 1
        log.warning("step %d: non-finite loss (%s on %s); optimizer step skipped (%d in a row, %d in total)",
                    step, worst if worst else "on another rank", "this rank" if worst else "some rank",
                    self.in_a_row, self.skipped_total)
        if self.in_a_row >= self.max_bad_steps:
            raise TooManyBadSteps(
                f"the loss was NaN or Inf for {self.in_a_row} steps in a row (steps {step - self.in_a_row + 1}"
                f"-{step}; --max_bad_steps {self.max_bad_steps}); stopping. Lower the learning rate, enable "
                "gradient_clipping in the DeepSpeed JSON, or use fp32 instead of bf16")
        return True


# ---------------------------------------------------------------------------------------------- lost ranks


class RankFailure(Exception):
    """Another rank died (or a collective failed); the message names the rank(s) when known."""


@dataclass(frozen=True)
class PeerTable:
    """Host name and pid of every rank (index = rank), and this process's rank."""

    hosts: tuple[str, ...]
    pids: tuple[int, ...]
    rank: int

    @classmethod
    def gather(cls, rank: int, world_size: int) -> "PeerTable":
        """All-gather (host, pid) over the default process group (no collective for one rank)."""
        me = (socket.gethostname(), os.getpid())
        entries: list[Any] = [me]
        if world_size > 1:
            import torch.distributed as dist

            entries = [None] * world_size
            dist.all_gather_object(entries, me)
        return cls(tuple(h for h, _ in entries), tuple(p for _, p in entries), rank)

    def describe(self, rank: int) -> str:
        return f"rank {rank} (pid {self.pids[rank]} on {self.hosts[rank]})"


def _process_gone(pid: int) -> bool:
    """True when `pid` no longer runs: absent, or a zombie waiting for its parent to reap it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return False


def lost_ranks(table: PeerTable, wait_s: float = 3.0) -> list[int]:
    """Ranks on this host whose process is gone, polling up to `wait_s` seconds for one to vanish."""
    host = table.hosts[table.rank]
    local = [r for r in range(len(table.pids)) if r != table.rank and table.hosts[r] == host]
    deadline = time.monotonic() + wait_s
    while True:
        gone = [r for r in local if _process_gone(table.pids[r])]
        if gone or time.monotonic() >= deadline:
            return gone
        time.sleep(0.1)


def short_cause(error: BaseException) -> str:
    """The gist of a torch.distributed/gloo error: its first sentence, without the source location."""
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    if text.startswith("[") and "] " in text:
        text = text.split("] ", 1)[1]  # "[.../gloo/transport/tcp/pair.cc:553] Connection closed by peer ..."
    return text.split(". ")[0][:200]


def failure_message(table: PeerTable, cause: str) -> str:
    """One line: which rank(s) died as seen from this rank, or that a remote one probably did."""
    gone = lost_ranks(table)
    me = table.describe(table.rank)
    if gone:
        names = ", ".join(table.describe(r) for r in gone)
        return f"{names} exited unexpectedly; {me} stops too ({cause})"
    remote = sorted(set(table.hosts) - {table.hosts[table.rank]})
    where = f" (ranks on {', '.join(remote)} cannot be checked from here)" if remote else ""
    return f"{me}: {cause}; a peer rank failed or stopped responding{where}"


def is_collective_failure(error: BaseException) -> bool:
    """True for the errors torch.distributed/gloo raise when a peer is lost or a collective times out."""
    import torch.distributed as dist

    if isinstance(error, getattr(dist, "DistError", ())):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and any(
        s in text for s in ("Connection closed by peer", "Connection reset by peer", "Timed out", "timed out",
                            "Broken pipe", "gloo", "ProcessGroup"))


def install_sigterm_report(table: PeerTable, prog: str, busy: Callable[[], bool]) -> None:
    """On SIGTERM (what deepspeed's launcher sends every rank when one has died), print one line
    naming the lost rank(s) and exit with 143. Does nothing while `busy()` is True (this rank is
    already reporting a failure it caught itself)."""

    def handler(signum: int, frame: Any) -> None:
        if busy():
            return
        gone = lost_ranks(table, wait_s=2.0)
        if gone:
            names = ", ".join(table.describe(r) for r in gone)
            print(f"{prog}: error: {names} exited unexpectedly; the launcher stopped "
                  f"{table.describe(table.rank)}", file=sys.stderr, flush=True)
        else:
            print(f"{prog}: {table.describe(table.rank)} stopped by SIGTERM", file=sys.stderr, flush=True)
        os._exit(128 + signal.SIGTERM)

    signal.signal(signal.SIGTERM, handler)
