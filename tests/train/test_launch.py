"""Launching bertperf/pretrain.py every supported way, and a real two-node job.

Every launch runs the same job (tiny BERT, ZeRO-2, fp32, 2 ranks, 3 steps, one thread per rank
so the arithmetic is identical everywhere) and must reproduce, value for value, the metrics of
the reference single-node launch `deepspeed --num_gpus 2`:
- `mpirun -np 2 python bertperf/pretrain.py` (Open MPI; DeepSpeed's MPI discovery via mpi4py)
- `deepspeed --launcher openmpi --hostfile H --force_multi --no_ssh_check ...`, through
  scripts/launch_multinode.sh mpi
- two per-node `deepspeed --no_ssh --node_rank K` launches, through scripts/launch_multinode.sh node
- the same per-node launches as two "nodes": two network namespaces joined by a veth pair this
  test creates, rendezvous and gloo over the veth addresses (GLOO_SOCKET_IFNAME). Needs root and
  iproute2; where namespaces cannot be created the test is skipped with the reason (shown by -ra).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from tests.train.conftest import REPO, SCRIPT, VENV_BIN, env, free_port, read_metrics

STEPS = 3
TIMEOUT = 300
LAUNCH_SCRIPT = REPO / "scripts" / "launch_multinode.sh"
KEYS = ("step", "epoch", "samples", "loss", "mlm_loss", "nsp_loss", "mlm_acc", "nsp_acc", "lr")


@dataclass(frozen=True)
class Job:
    ds_config: Path
    shards: Path
    vocab: Path
    root: Path

    def args(self, output_dir: Path) -> list[str]:
        return ["--deepspeed_config", str(self.ds_config), "--model_config", "tiny", "--data_dir", str(self.shards),
                "--vocab", str(self.vocab), "--output_dir", str(output_dir), "--max_steps", str(STEPS),
                "--log_every", "1"]


def job_env(**extra: str) -> dict[str, str]:
    e = env()
    e.update(OMP_NUM_THREADS="1", **extra)  # one thread per rank in every launch: identical arithmetic
    return e


@pytest.fixture(scope="module")
def job(tmp_path_factory, sample_shards, vocab_file) -> Job:
    root = tmp_path_factory.mktemp("launch")
    cfg = {"train_micro_batch_size_per_gpu": 8, "gradient_accumulation_steps": 1,
           "zero_optimization": {"stage": 2}, "gradient_clipping": 1.0,
           "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "weight_decay": 0.01}},
           "scheduler": {"type": "WarmupLinearDecay", "params": {"warmup_num_steps": 1}}}
    (root / "ds.json").write_text(json.dumps(cfg))
    return Job(root / "ds.json", sample_shards, vocab_file, root)


def check_run(result: subprocess.CompletedProcess | tuple[int, str], what: str) -> None:
    code, text = (result.returncode, result.stdout + result.stderr) if not isinstance(result, tuple) else result
    assert code == 0, f"{what}: exit {code}\n{text[-5000:]}"
    assert "Traceback" not in text, f"{what}:\n{text[-5000:]}"


def metrics(output_dir: Path) -> list[dict[str, float]]:
    return [{k: row[k] for k in KEYS} for row in read_metrics(output_dir)]


@pytest.fixture(scope="module")
def reference(job) -> list[dict[str, float]]:
    """The job under `deepspeed --num_gpus 2` on this node."""
    out = job.root / "reference"
    cmd = [str(VENV_BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()), str(SCRIPT),
           *job.args(out)]
    check_run(subprocess.run(cmd, cwd=REPO, env=job_env(), capture_output=True, text=True, timeout=TIMEOUT),
              "deepspeed --num_gpus 2")
    rows = metrics(out)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert [r["samples"] for r in rows] == [16 * s for s in range(1, STEPS + 1)]  # 2 ranks x 8
    return rows


def need_mpi() -> None:
    """MPI is part of the setup (`make setup` installs Open MPI and mpi4py): missing is a failure."""
    if shutil.which("mpirun") is None:
        pytest.fail("mpirun not found: `make setup` installs Debian's openmpi-bin and libopenmpi-dev")
    probe = subprocess.run([sys.executable, "-c", "import mpi4py"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.fail(f"mpi4py is not importable ({probe.stderr.strip()[-200:]}): `make setup` installs it")


def test_mpirun(job, reference):
    need_mpi()
    out = job.root / "mpirun"
    # --bind-to none: Open MPI would pin each rank to one core; --oversubscribe: 2 ranks even on 1 core
    cmd = ["mpirun", "-np", "2", "--bind-to", "none", "--oversubscribe", sys.executable, str(SCRIPT),
           *job.args(out)]
    result = subprocess.run(cmd, cwd=REPO, env=job_env(), capture_output=True, text=True, timeout=TIMEOUT)
    check_run(result, "mpirun -np 2")
    assert "on 2 ranks" in result.stdout
    assert "malloc: tcmalloc" in result.stdout  # the ranks re-executed themselves onto tcmalloc (MPI kept)
    assert metrics(out) == reference


def test_deepspeed_openmpi_launcher_via_script(job, reference):
    need_mpi()
    out = job.root / "openmpi"
    hostfile = job.root / "hostfile-local"
    hostfile.write_text("localhost slots=2\n")
    e = job_env(MASTER_PORT=str(free_port()), NET_IFACE="lo")
    result = subprocess.run(["bash", str(LAUNCH_SCRIPT), "mpi", str(hostfile), "127.0.0.1", "--", *job.args(out)],
                            cwd=job.root, env=e, capture_output=True, text=True, timeout=TIMEOUT)
    check_run(result, "launch_multinode.sh mpi")
    launched = [ln for ln in result.stderr.splitlines() if ln.startswith("+ ")]
    assert len(launched) == 1 and "--launcher openmpi" in launched[0] and "--force_multi" in launched[0], launched
    assert "mpirun -n 2" in result.stdout + result.stderr  # DeepSpeed's runner went through Open MPI
    assert metrics(out) == reference


def start_node(script_args: list[str], e: dict[str, str], log: Path, prefix: list[str] | None = None):
    cmd = [*(prefix or []), "bash", str(LAUNCH_SCRIPT), *script_args]
    f = open(log, "w")
    return subprocess.Popen(cmd, cwd=log.parent, env=e, stdout=f, stderr=subprocess.STDOUT), f


def wait_nodes(nodes, logs: list[Path]) -> None:
    """Wait for every node's launcher; on a timeout kill them all; check each exited 0."""
    try:
        for proc, _ in nodes:
            proc.wait(timeout=TIMEOUT)
    finally:
        for proc, f in nodes:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            f.close()
    for k, ((proc, _), log) in enumerate(zip(nodes, logs)):
        check_run((proc.returncode, log.read_text()), f"node {k}")


def test_per_node_no_ssh_launches_via_script(job, reference):
    out = job.root / "per-node"
    hostfile = job.root / "hostfile-2nodes"
    hostfile.write_text("node0 slots=1\nnode1 slots=1\n")
    e = job_env(MASTER_PORT=str(free_port()))
    logs = [job.root / f"per-node-{k}.log" for k in (0, 1)]
    nodes = [start_node(["node", str(hostfile), "127.0.0.1", str(k), "--", *job.args(out)], e, logs[k])
             for k in (0, 1)]
    wait_nodes(nodes, logs)
    for k in (0, 1):
        assert f"--no_ssh --node_rank {k}" in logs[k].read_text()
    assert metrics(out) == reference


# ------------------------------------------------------------------------------ two nodes over a veth pair


@dataclass(frozen=True)
class VethNodes:
    namespaces: tuple[str, str]
    devices: tuple[str, str]
    addresses: tuple[str, str]


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


def _ip_ok(*args: str) -> None:
    r = _ip(*args)
    if r.returncode != 0:
        raise RuntimeError(f"`ip {' '.join(args)}` failed: {r.stderr.strip()}")


def _kill_namespace_processes(ns: str) -> None:
    """End what this test started inside namespace `ns` (a launcher left behind by a failure)."""
    r = _ip("netns", "pids", ns)
    for pid in r.stdout.split():
        try:
            os.kill(int(pid), 9)
        except (ProcessLookupError, ValueError):
            pass


@contextmanager
def veth_nodes() -> Iterator[VethNodes]:
    """Two network namespaces joined by a veth pair, 10.X.Y.1/24 and 10.X.Y.2/24, loopback up.

    Skips (with the reason) where namespaces cannot be made; always deletes what it created.
    """
    if os.geteuid() != 0:
        pytest.skip("two-node test needs root to create network namespaces (ip netns add)")
    if shutil.which("ip") is None:
        pytest.skip("two-node test needs the `ip` command (Debian package iproute2)")
    tag = f"bp{os.getpid() % 100000}"
    ns = (f"{tag}n0", f"{tag}n1")
    dev = (f"{tag}v0", f"{tag}v1")
    net = f"10.{150 + os.getpid() % 100}.{os.getpid() % 250 + 1}"
    addr = (f"{net}.1", f"{net}.2")
    created: list[str] = []
    try:
        for name in ns:
            r = _ip("netns", "add", name)
            if r.returncode != 0:
                pytest.skip(f"two-node test: cannot create a network namespace here: `ip netns add` said "
                            f"{r.stderr.strip()!r}")
            created.append(name)
        r = _ip("link", "add", dev[0], "type", "veth", "peer", "name", dev[1])
        if r.returncode != 0:
            pytest.skip(f"two-node test: cannot create a veth pair here: {r.stderr.strip()!r}")
        for k in (0, 1):
            _ip_ok("link", "set", dev[k], "netns", ns[k])
            _ip_ok("-n", ns[k], "addr", "add", f"{addr[k]}/24", "dev", dev[k])
            _ip_ok("-n", ns[k], "link", "set", dev[k], "up")
            _ip_ok("-n", ns[k], "link", "set", "lo", "up")
        yield VethNodes(ns, dev, addr)
    finally:
        for name in created:
            _kill_namespace_processes(name)
            _ip("netns", "del", name)  # deletes the veth end inside it, and with it the pair
        if _ip("link", "show", dev[0]).returncode == 0:  # the pair never left the root namespace
            _ip("link", "del", dev[0])


def tiny_params(vocab: Path) -> int:
    from bertperf.model import BertConfig, BertForPreTraining

    size = sum(1 for _ in open(vocab, encoding="utf-8"))
    return sum(p.numel() for p in BertForPreTraining(BertConfig.preset("tiny").replace(vocab_size=size)).parameters())


def test_two_nodes_over_veth_zero2(job, request):
    out = job.root / "two-nodes"
    hostfile = job.root / "hostfile-veth"
    with veth_nodes() as net:
        reference = request.getfixturevalue("reference")  # after the namespaces: a skip costs nothing
        hostfile.write_text(f"{net.addresses[0]} slots=1\n{net.addresses[1]} slots=1\n")
        port = str(free_port())
        logs = [job.root / f"veth-node-{k}.log" for k in (0, 1)]
        nodes = []
        for k in (0, 1):
            e = job_env(MASTER_PORT=port, NET_IFACE=net.devices[k])
            args = ["node", str(hostfile), net.addresses[0], str(k), "--", *job.args(out)]
            nodes.append(start_node(args, e, logs[k], prefix=["ip", "netns", "exec", net.namespaces[k]]))
        wait_nodes(nodes, logs)
        # node 1 reaches node 0 only over the veth pair: its traffic counters show the gradients
        # (ZeRO-2 reduce-scatters them and all-gathers the weights every step) crossed it
        stats = json.loads(_ip("-n", net.namespaces[1], "-s", "-j", "link", "show", net.devices[1]).stdout)[0]
        model_bytes = 4 * tiny_params(job.vocab)
        assert stats["stats64"]["tx"]["bytes"] > model_bytes and stats["stats64"]["rx"]["bytes"] > model_bytes, stats
    text0 = logs[0].read_text()
    assert "on 2 ranks" in text0 and "ZeRO-2" in text0
    assert f"--master_addr {net.addresses[0]}" in logs[1].read_text()
    assert metrics(out) == reference
