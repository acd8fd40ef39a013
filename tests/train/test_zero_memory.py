"""The per-rank memory accounting of `bertperf.train.memory`.

- In one process, on a stand-in ZeRO optimizer (an object of a `deepspeed.*` class holding views
  of flat buffers, a reduce bucket and fp32 partitions): every storage is counted once, in its
  category, for awkward shapes and a tied weight.
- On 2 real ranks (tiny BERT, fp32 AdamW, 2 steps) under ZeRO-0, ZeRO-1 and ZeRO-3: the counts
  equal what the parameter shapes imply. ZeRO-0 holds 4 bytes per parameter each of weights and
  gradients and 8 of AdamW moments; ZeRO-1 halves the moments and adds a half-size fp32 master
  per rank; ZeRO-3 also halves the weights and gradients (partitions padded per parameter).
"""
from __future__ import annotations

import math
import types

import pytest
import torch
from torch import nn

from bertperf.train.memory import JobSpec, launch_local, measure

FP32 = 4


class _Engine:
    def __init__(self, module: nn.Module, optimizer) -> None:
        self.module, self.optimizer = module, optimizer


def _fake_zero_class():
    """A class that looks like DeepSpeed's to the walker (its module name starts with deepspeed)."""
    return types.new_class("FakeZeroOptimizer", (), {}, lambda ns: ns.update(__module__="deepspeed.fake_zero"))


@pytest.mark.parametrize("shapes", [[(7, 3)], [(1, 1), (33, 17)], [(5,), (130, 31), (2, 2, 2)]])
def test_plain_optimizer_counts_each_storage_once(shapes):
    torch.manual_seed(0)
    module = nn.ParameterList([nn.Parameter(torch.randn(s)) for s in shapes])
    tied = nn.Module()
    tied.a, tied.b = module, module  # the same parameters reachable twice
    opt = torch.optim.AdamW(tied.parameters(), lr=1e-3)
    sum(p.square().sum() for p in module).backward()
    opt.step()
    n = sum(math.prod(s) for s in shapes)
    snap = measure(_Engine(tied, opt))
    # AdamW keeps exp_avg, exp_avg_sq (fp32, like the weight) and a 0-dim fp32 step per tensor
    assert snap.bytes == {"params": FP32 * n, "grads": FP32 * n, "master": 0,
                          "optim_state": 2 * FP32 * n + FP32 * len(shapes), "buffers": 0}
    assert snap.total == sum(snap.bytes.values())
    assert snap.peak_rss_bytes >= snap.rss_bytes > 0


@pytest.mark.parametrize("world,rank", [(2, 0), (2, 1), (3, 2)])
def test_zero_like_wrapper_partitions_views_and_buckets(world, rank):
    """Flat parameter buffer with views as the module's weights, a rank's fp32 master slice updated
    by the inner optimizer, gradient partitions as views of one flat buffer, a reduce bucket."""
    shapes = [(11, 5), (4,), (3, 7)]
    n = sum(math.prod(s) for s in shapes)
    padded = -(-n // world) * world
    part = padded // world
    flat = torch.zeros(padded)
    module = nn.Module()
    offset = 0
    for i, s in enumerate(shapes):
        p = nn.Parameter(torch.empty(0))
        p.data = flat[offset:offset + math.prod(s)].view(s)
        offset += math.prod(s)
        module.register_parameter(f"w{i}", p)
    master = flat[rank * part:(rank + 1) * part].clone()
    inner = torch.optim.AdamW([master], lr=1e-3)
    master.grad = torch.ones_like(master)
    inner.step()
    master.grad = None
    fake = _fake_zero_class()
    wrapper = fake()
    wrapper.optimizer = inner
    wrapper.single_partition_of_fp32_groups = [master]
    grad_flat = torch.zeros(part + 3)
    wrapper.averaged_gradients = {0: [grad_flat[:2], grad_flat[2:part]]}  # views: one storage
    bucket = fake()
    bucket.buffer = [torch.empty(1000)]
    wrapper.ipg_buckets = {torch.float32: bucket}
    wrapper.scale = 1.0
    snap = measure(_Engine(module, wrapper))
    assert snap.bytes == {"params": FP32 * padded, "grads": FP32 * (part + 3), "master": FP32 * part,
                          "optim_state": 2 * FP32 * part + FP32, "buffers": FP32 * 1000}
    # a plain object (not DeepSpeed's) is not walked into
    wrapper.averaged_gradients = {0: [types.SimpleNamespace(hidden=torch.zeros(50))]}
    assert measure(_Engine(module, wrapper)).bytes["grads"] == 0


# ------------------------------------------------------------------------------- real ranks


WORLD = 2


@pytest.fixture(scope="module")
def tiny_groups() -> tuple[list[list[int]], int]:
    """Element counts of tiny BERT's parameters, per optimizer group (decayed, not decayed)."""
    from bertperf.model import BertConfig, BertForPreTraining
    from bertperf.optim.lamb import lamb_param_groups

    model = BertForPreTraining(BertConfig.preset("tiny"))
    groups = [[p.numel() for p in g["params"]] for g in lamb_param_groups(model, 0.01)]
    return groups, sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def runs() -> dict[int, list[dict]]:
    out = {}
    for stage in (0, 1, 3):
        reports = launch_local(JobSpec(model_config="tiny", zero_stage=stage, micro_batch=2, seq_length=64,
                                       predictions=10, steps=2), WORLD, timeout=300)
        out[stage] = sorted(reports, key=lambda r: r["rank"])
    return out


def _bytes(report: dict, phase: str = "after_backward") -> dict[str, int]:
    return report[phase]["bytes"]


def test_same_job_under_every_stage(runs, tiny_groups):
    _, n = tiny_groups
    for stage, reports in runs.items():
        assert [r["rank"] for r in reports] == [0, 1] and all(r["n_params"] == n for r in reports), stage
        # before the first update every stage computes the same loss on the same batch
        assert [r["losses"][0] for r in reports] == [r["losses"][0] for r in runs[0]], stage


def test_zero0_holds_everything(runs, tiny_groups):
    groups, n = tiny_groups
    tensors = sum(len(g) for g in groups)
    for r in runs[0]:
        assert _bytes(r) == {"params": FP32 * n, "grads": FP32 * n, "master": 0,
                             "optim_state": 2 * FP32 * n + FP32 * tensors, "buffers": 0}
        assert _bytes(r, "after_step")["grads"] == 0  # the step consumed and freed the gradients
        assert r["peak_rss_bytes"] > r["after_backward"]["total"]


def test_zero1_halves_the_optimizer_state(runs, tiny_groups):
    groups, n = tiny_groups
    # DeepSpeed pads each flat group to a multiple of 2 x world elements, then splits it evenly
    align = 2 * WORLD
    partition = sum(-(-sum(g) // align) * align // WORLD for g in groups)
    z0 = _bytes(runs[0][0])
    for r in runs[1]:
        b = _bytes(r)
        assert b["master"] == FP32 * partition  # this rank's fp32 slice
        assert b["optim_state"] == 2 * FP32 * partition + FP32 * len(groups)  # moments + a step per group
        assert b["params"] == FP32 * partition * WORLD  # every rank keeps the whole (flat) model
        assert b["grads"] >= FP32 * partition  # at least its partition's gradients until the step
        assert _bytes(r, "after_step")["grads"] < FP32 * partition // 1000  # freed by the step (a norm scalar)
    moments0 = z0["optim_state"] - FP32 * sum(len(g) for g in groups)
    moments1 = [_bytes(r)["optim_state"] - FP32 * len(groups) for r in runs[1]]
    assert sum(moments1) == moments0 + 2 * FP32 * (partition * WORLD - n)  # split in two, plus the padding
    assert moments1[0] == moments1[1]


def test_zero3_partitions_weights_and_gradients(runs, tiny_groups):
    groups, n = tiny_groups
    # ZeRO-3 partitions each parameter on its own, padded to a multiple of the world size
    partition = sum(-(-numel // WORLD) for g in groups for numel in g)
    for r in runs[3]:
        b, found = _bytes(r), r["after_backward"]["found"]
        assert b["master"] == FP32 * partition
        assert b["optim_state"] == 2 * FP32 * partition + FP32 * len(groups)
        assert found["grads: optimizer.grad_partitions_flat_buffer"] == FP32 * partition
        # its weight partition plus the small parameters DeepSpeed keeps whole on every rank
        # (stage3_param_persistence_threshold): more than half the model, far less than all of it
        assert FP32 * partition <= b["params"] < FP32 * n
        assert b["buffers"] > 0  # the reduce bucket
