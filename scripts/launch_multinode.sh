#!/usr/bin/env bash
# Multi-node launch of bertperf/pretrain.py with DeepSpeed, on CPU nodes (gloo) or GPU nodes.
#
# Two ways to start N nodes listed in a hostfile (format: scripts/hostfile.example):
#
#   mpi   ONE command, on the first node. Open MPI starts every rank on every host of the hostfile
#         (remote hosts over ssh: passwordless ssh from the first node to all of them, and the
#         repository with its .venv at the same path on every node). Runs
#           deepspeed --launcher openmpi --hostfile H --force_multi --no_ssh_check \
#                     --master_addr ADDR --master_port PORT SCRIPT ARGS
#         Needs Debian's openmpi-bin + libopenmpi-dev and mpi4py on every node (`make setup`).
#
#   node  ONE command PER NODE, no ssh and no MPI (by hand, from a job scheduler, in containers).
#         Node K (0-based, line K of the hostfile) runs
#           deepspeed --hostfile H --no_ssh --node_rank K --master_addr ADDR --master_port PORT SCRIPT ARGS
#         Start all N within DeepSpeed's rendezvous timeout; node 0 hosts the rendezvous.
#
# Usage:
#   scripts/launch_multinode.sh mpi  HOSTFILE MASTER_ADDR           [-- PRETRAIN_ARGS...]
#   scripts/launch_multinode.sh node HOSTFILE MASTER_ADDR NODE_RANK [-- PRETRAIN_ARGS...]
#
#   MASTER_ADDR  an address of node 0 that every node can reach (on the network given by NET_IFACE)
#   PRETRAIN_ARGS  passed to the script, e.g. --deepspeed_config configs/ds-phase1.json
#                --model_config base --data_dir /data/shards --output_dir /runs/p1 --max_steps 7038
#                Use absolute paths (or paths valid from the same directory on every node); the
#                output directory must be shared by the nodes (rank 0 writes metrics and the HF
#                export, every rank writes its part of each checkpoint).
#
# Environment (all optional):
#   MASTER_PORT    rendezvous TCP port on MASTER_ADDR, free on node 0 (default 29500)
#   NET_IFACE      network interface the nodes talk over (eth1, ib0, a veth, ...): exported to the
#                  ranks as GLOO_SOCKET_IFNAME (CPU collectives) and NCCL_SOCKET_IFNAME (GPU), and
#                  in mpi mode given to Open MPI as btl_tcp_if_include (DeepSpeed's default is eth0)
#   SCRIPT         the training script (default: bertperf/pretrain.py of this repository)
#   DEEPSPEED      the deepspeed launcher (default: the repository's .venv/bin/deepspeed, else PATH)
#   OMP_NUM_THREADS  threads per rank (default: the node's cores shared equally by its ranks)
#   DRY_RUN=1      print the command and exit
# Forwarded to every rank in mpi mode too (Open MPI -x): PATH, PYTHONPATH (by DeepSpeed), HF_HUB_OFFLINE,
# TORCH_EXTENSIONS_DIR, GLOO_SOCKET_IFNAME, NCCL_SOCKET_IFNAME and OMP_NUM_THREADS when set.
# As root, Open MPI refuses to run unless OMPI_ALLOW_RUN_AS_ROOT(_CONFIRM)=1: this script sets both.
#
# Examples: two nodes, addresses 10.0.0.1 (node 0) and 10.0.0.2, interface eth1:
#   printf '10.0.0.1 slots=1\n10.0.0.2 slots=1\n' > hosts
#   NET_IFACE=eth1 scripts/launch_multinode.sh mpi hosts 10.0.0.1 -- --deepspeed_config ...   # on node 0 only
# or, without ssh:
#   NET_IFACE=eth1 scripts/launch_multinode.sh node hosts 10.0.0.1 0 -- --deepspeed_config ... # on node 0
#   NET_IFACE=eth1 scripts/launch_multinode.sh node hosts 10.0.0.1 1 -- --deepspeed_config ... # on node 1
set -euo pipefail

usage() {
    sed -n '/^# Usage:/,/^#   MASTER_ADDR/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    echo "see the header of $0 for the environment it reads" >&2
    exit 2
}
die() { echo "launch_multinode.sh: error: $*" >&2; exit 2; }

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
[ $# -ge 3 ] || usage
mode=$1 hostfile=$2 master_addr=$3
shift 3
node_rank=
if [ "$mode" = node ]; then
    [ $# -ge 1 ] && [ "$1" != -- ] || die "node mode needs NODE_RANK after MASTER_ADDR"
    node_rank=$1
    shift
    [[ $node_rank =~ ^[0-9]+$ ]] || die "NODE_RANK must be a number >= 0, got '$node_rank'"
elif [ "$mode" != mpi ]; then
    die "unknown mode '$mode': use 'mpi' (one command, Open MPI over ssh) or 'node' (one command per node)"
fi
if [ $# -ge 1 ]; then
    [ "$1" = -- ] || die "put -- before the training script's arguments (got '$1')"
    shift
fi

[ -f "$hostfile" ] || die "$hostfile: hostfile not found (format: scripts/hostfile.example)"
hostfile=$(cd "$(dirname "$hostfile")" && pwd)/$(basename "$hostfile")
nodes=$(grep -cE '^[[:space:]]*[^#[:space:]]+[[:space:]]+slots=[0-9]+' "$hostfile" || true)
[ "$nodes" -ge 1 ] || die "$hostfile: no '<host> slots=<n>' line (format: scripts/hostfile.example)"
if [ -n "$node_rank" ] && [ "$node_rank" -ge "$nodes" ]; then
    die "NODE_RANK $node_rank is out of range: $hostfile lists $nodes node(s), ranks 0..$((nodes - 1))"
fi

port=${MASTER_PORT:-29500}
script=${SCRIPT:-$repo/bertperf/pretrain.py}
[ -f "$script" ] || die "$script: training script not found (set SCRIPT)"
if [ -n "${DEEPSPEED:-}" ]; then
    ds=$DEEPSPEED
elif [ -x "$repo/.venv/bin/deepspeed" ]; then
    ds=$repo/.venv/bin/deepspeed
    export PATH="$repo/.venv/bin:$PATH"   # the ranks' python, mpirun's -x PATH
else
    ds=$(command -v deepspeed) || die "deepspeed not found: run 'make setup' or set DEEPSPEED"
fi

export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$repo/.cache/torch_extensions}
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
if [ -n "${NET_IFACE:-}" ]; then
    export GLOO_SOCKET_IFNAME=$NET_IFACE NCCL_SOCKET_IFNAME=$NET_IFACE
fi

cmd=("$ds")
if [ "$mode" = mpi ]; then
    command -v mpirun >/dev/null || die "mpirun not found: install Open MPI (make setup installs openmpi-bin)"
    if [ "$(id -u)" = 0 ]; then
        export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    fi
    mpi_args="--bind-to none"
    [ -n "${NET_IFACE:-}" ] && mpi_args+=" --mca btl_tcp_if_include $NET_IFACE"
    for var in PATH HF_HUB_OFFLINE TORCH_EXTENSIONS_DIR GLOO_SOCKET_IFNAME NCCL_SOCKET_IFNAME \
               OMP_NUM_THREADS OMPI_ALLOW_RUN_AS_ROOT OMPI_ALLOW_RUN_AS_ROOT_CONFIRM; do
        [ -n "${!var:-}" ] && mpi_args+=" -x $var"
    done
    cmd+=(--launcher openmpi --launcher_args "$mpi_args" --hostfile "$hostfile" --force_multi --no_ssh_check)
else
    cmd+=(--hostfile "$hostfile" --no_ssh --node_rank "$node_rank")
fi
cmd+=(--master_addr "$master_addr" --master_port "$port" "$script" "$@")

{ printf +; printf ' %q' "${cmd[@]}"; echo; } >&2
[ "${DRY_RUN:-0}" = 1 ] && exit 0
exec "${cmd[@]}"
