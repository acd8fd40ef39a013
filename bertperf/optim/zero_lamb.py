"""LAMB that stays exact under DeepSpeed ZeRO-1/2: trust ratios from the fragments of each tensor.

Under ZeRO-1/2 DeepSpeed flattens every param group into one buffer, cuts it into one contiguous
partition per data-parallel rank and hands the client optimizer one flat fp32 partition per group
(``DeepSpeedZeroOptimizer.single_partition_of_fp32_groups``; the same for ``BF16_Optimizer``,
which DeepSpeed uses for bf16 under ZeRO-1). A plain LAMB then takes ||p|| and ||u|| over a whole
partition, i.e. over slices of several tensors, and over a part of a tensor that straddles two
ranks (DeepSpeed issues #88, #490): the trust ratios, and so the training, change.

`attach_zero_lamb(engine)` makes bertperf's `Lamb` exact there. It reads the fragment layout
DeepSpeed already keeps for each model tensor (``param._hp_mapping``: where the part of the tensor
this rank owns starts in the rank's flat partition, and its length) and installs a
`PartitionedLambStep` as ``Lamb.partitioned_step``. One step then does:

1. global clip: the squared gradient norm over every fragment of every group on this rank,
   all-reduced (float64 sum) over the data-parallel group: ``c = max_grad_norm / ||g||`` if
   ``||g|| > max_grad_norm``, else 1 (exactly `Lamb`'s rule, on the same gradients);
2. moments and update per fragment (`Lamb.fragment_bucket`, `Lamb.update_moments`), which return
   per-fragment ``(||p||^2, ||u||^2)``; these are summed per tensor (a tensor has at most one
   fragment per rank) and all-reduced, one float64 vector for all adapted groups;
3. ``p -= lr * r * u`` per fragment with the tensor's trust ratio ``r = ||p|| / ||u||``
   (`Lamb.apply_update`). Groups with ``layer_adaptation=False`` need no norms: one fused step.

DeepSpeedZeroOptimizer steps the groups one at a time (it shows the optimizer one group, then
copies that group's fp32 partition into the model's low-precision partition), while the clip
needs every group's gradient. So a step called with only some groups keeps their (already
reduced) gradient partitions and returns; the call that completes the set runs the exact step for
all groups and then refreshes the model copies of the groups stepped earlier. Peak memory is what
DeepSpeed held before its loop (every group's reduced gradients), and two all-reduces per step
(one scalar, one vector of two float64 per tensor) are the communication added.

Elements of a partition that belong to no tensor (alignment and tail padding) are never touched.
Unlike `Lamb` without ZeRO, a tensor whose gradient DeepSpeed left at zero (no gradient this step)
is still stepped: DeepSpeed's flat partitions do not say which tensors had gradients.

Supported: DeepSpeedZeroOptimizer (ZeRO-1 and ZeRO-2, fp32 and bf16) and BF16_Optimizer (bf16
under ZeRO-1), on any device the Lamb backend runs on. Refused with a BertperfError: ZeRO-3 (its
per-parameter partitions are laid out differently; not implemented), optimizer offload, and param
groups on different process groups (MoE expert groups). Anything else (ZeRO-0, other optimizers) is
left alone: there every tensor is whole and `Lamb.step` is already exact.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from bertperf.optim.lamb import Lamb, clip_coefficient, trust_ratios
from bertperf.utils.errors import BertperfError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fragment:
    """The part of one model tensor held in a rank's flat partition.

    `tensor` is the tensor's index in its param group (the same on every rank); the fragment is
    ``flat[start:start + numel]`` and holds a contiguous run of the flattened tensor.
    """

    tensor: int
    start: int
    numel: int


@dataclass
class GroupPartition:
    """One param group's flat fp32 partition on this rank.

    `flat`: the 1-D fp32 tensor the Lamb steps (its group's only parameter). `fragments`: the tensor
    pieces it holds, disjoint. `num_tensors`: the group's tensor count over all ranks. `model_copy`:
    the wrapper's low-precision (or fp32 model) copy of this partition, refreshed from `flat` when
    the wrapper copied it before the deferred step ran; None if nothing needs refreshing.
    """

    flat: Tensor
    fragments: list[Fragment]
    num_tensors: int
    model_copy: Tensor | None = None

    def spans(self) -> list[tuple[int, int]]:
        return [(f.start, f.numel) for f in self.fragments]

    def tensor_index(self) -> Tensor:
        """int64 [fragments]: the tensor each fragment belongs to."""
        return torch.tensor([f.tensor for f in self.fragments], dtype=torch.int64)


def _all_reduce_sum(values: Tensor, process_group: Any) -> Tensor:
    """Sum a CPU float64 tensor over `process_group` (no-op without torch.distributed or for one rank)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(process_group) == 1:
        return values
    dist.all_reduce(values, op=dist.ReduceOp.SUM, group=process_group)
    return values


class PartitionedLambStep:
    """The exact LAMB step over flat partitions (see the module docstring); set as ``Lamb.partitioned_step``.

    Args:
        partitions: one `GroupPartition` per param group, in group order; group i of the Lamb holds
            exactly ``[partitions[i].flat]``. Groups are recognised by that tensor, not by their
            dict: DeepSpeed may show the optimizer a sub-list of its groups while it steps, and a
            checkpoint load replaces the dicts (the parameters stay).
        process_group: the data-parallel group the partitions are spread over (None: the world).
    """

    def __init__(self, partitions: list[GroupPartition], process_group: Any) -> None:
        self.partitions = partitions
        self.process_group = process_group
        self._index = {id(part.flat): i for i, part in enumerate(partitions)}
        # group index -> (its param-group dict, its gradient partition), until every group has arrived
        self._pending: dict[int, tuple[dict[str, Any], Tensor]] = {}

    def _group_index(self, group: dict[str, Any]) -> int:
        params = group["params"]
        index = self._index.get(id(params[0])) if len(params) == 1 else None
        if index is None:
            raise BertperfError("Lamb under ZeRO: a param group appeared that the ZeRO layout does not know; "
                                "call attach_zero_lamb after deepspeed.initialize and do not add groups later")
        return index

    def __call__(self, lamb: Lamb) -> None:
        """Collect the gradients of the groups `lamb` shows now; run the exact step once all are in."""
        shown = []
        for group in lamb.param_groups:
            index = self._group_index(group)
            grad = self.partitions[index].flat.grad
            if grad is None:
                continue
            if index in self._pending:
                raise BertperfError(f"Lamb under ZeRO: param group {index} was stepped twice before the others; "
                                    "the step of the previous iteration was incomplete")
            self._pending[index] = (group, grad)
            shown.append(index)
        if len(self._pending) < len(self.partitions):
            return
        groups, grads = zip(*(self._pending[i] for i in range(len(self.partitions))))
        deferred = [i for i in self._pending if i not in shown]
        self._pending = {}
        self.step(lamb, list(groups), list(grads))
        with torch.no_grad():
            for i in deferred:
                copy = self.partitions[i].model_copy
                if copy is not None:
                    copy.copy_(self.partitions[i].flat)

    def clip_coef(self, lamb: Lamb, grads: list[Tensor]) -> float:
        """The global-norm clip coefficient from every rank's fragments (1.0 without clipping)."""
        if lamb.max_grad_norm <= 0:
            return 1.0
        pieces = [g.narrow(0, s, n) for part, g in zip(self.partitions, grads) for s, n in part.spans()]
        local = lamb.backend.grad_sq_norm(pieces) if pieces else 0.0
        total = _all_reduce_sum(torch.tensor([local], dtype=torch.float64), self.process_group)
        return clip_coefficient(float(total[0]), lamb.max_grad_norm)

    @torch.no_grad()
    def step(self, lamb: Lamb, groups: list[dict[str, Any]], grads: list[Tensor]) -> None:
        """One exact LAMB step; `groups[i]` is the param-group dict (lr, betas, ...) of partition i and
        `grads[i]` its gradient partition (fp32, like its flat)."""
        coef = self.clip_coef(lamb, grads)
        adapted = []  # (bucket, fragment -> tensor index, per-tensor squared norms)
        for group, part, grad in zip(groups, self.partitions, grads):
            bucket = lamb.fragment_bucket(group, part.flat, grad.float(), part.spans(), coef)
            if not bucket.scalars.adapt:
                if bucket.params:
                    lamb.backend.fused_step(bucket)
                continue
            index = part.tensor_index()
            per_tensor = torch.zeros(part.num_tensors, 2, dtype=torch.float64)
            if bucket.params:
                per_tensor.index_add_(0, index, lamb.update_moments(bucket).to(torch.float64))
            adapted.append((bucket, index, per_tensor))
        if not adapted:
            return
        norms = _all_reduce_sum(torch.cat([t for _, _, t in adapted]), self.process_group)
        offset = 0
        for bucket, index, per_tensor in adapted:
            ratios = trust_ratios(norms[offset:offset + len(per_tensor)], True)
            offset += len(per_tensor)
            if bucket.params:
                lamb.apply_update(bucket, ratios[index] * bucket.scalars.lr)


# ---------------------------------------------------------------------------------------------- DeepSpeed


def _wrapper_layout(wrapper: Any) -> tuple[list[list[Tensor]], list[Tensor], list[Tensor], list[Any]] | None:
    """(model tensors per group, fp32 partitions, model-copy partitions, process groups) of a
    DeepSpeed ZeRO-1/2 or BF16 optimizer wrapper; None for a wrapper that keeps tensors whole."""
    import torch.distributed as dist
    from deepspeed.runtime.bf16_optimizer import BF16_Optimizer
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

    if isinstance(wrapper, DeepSpeedZeroOptimizer):
        if wrapper.cpu_offload:
            raise BertperfError("Lamb under ZeRO with offload_optimizer is not supported (its trust ratios would "
                                "be taken on flat slices); remove zero_optimization.offload_optimizer")
        lp_groups = wrapper.bit16_groups
        flats = wrapper.single_partition_of_fp32_groups
        copies_all = wrapper.parallel_partitioned_bit16_groups
    elif isinstance(wrapper, BF16_Optimizer):
        lp_groups = wrapper.bf16_groups
        flats = wrapper.fp32_groups_flat_partition
        copies_all = wrapper.bf16_partitioned_groups
    else:
        return None
    pgs = list(wrapper.real_dp_process_group)
    copies = [parts[dist.get_rank(group=pg)] for parts, pg in zip(copies_all, pgs)]
    return lp_groups, flats, copies, pgs


def _fragments(lp_params: list[Tensor], flat: Tensor) -> list[Fragment]:
    """The fragments of `lp_params` that DeepSpeed linked into `flat` (``param._hp_mapping``)."""
    out = []
    for k, lp in enumerate(lp_params):
        mapping = getattr(lp, "_hp_mapping", None)
        if mapping is None:
            continue
        addr = mapping.get_hp_fragment_address()
        view = mapping.hp_fragment
        if view.data_ptr() != flat.data_ptr() + addr.start * flat.element_size() or view.numel() != addr.numel:
            raise BertperfError("Lamb under ZeRO: DeepSpeed's fragment map does not point into the fp32 "
                                "partition; this DeepSpeed version is not supported")
        out.append(Fragment(tensor=k, start=int(addr.start), numel=int(addr.numel)))
    out.sort(key=lambda f: f.start)
    for a, b in zip(out, out[1:]):
        if a.start + a.numel > b.start:
            raise BertperfError("Lamb under ZeRO: overlapping tensor fragments in a partition")
    return out


def _check_tiling(lp_groups: list[list[Tensor]], partitions: list[GroupPartition], process_group: Any) -> None:
    """Every tensor's fragments over all ranks must add up to the whole tensor (one all-reduce)."""
    counts = torch.cat([torch.zeros(len(lp), dtype=torch.float64) for lp in lp_groups])
    base = 0
    for lp, part in zip(lp_groups, partitions):
        for f in part.fragments:
            counts[base + f.tensor] += f.numel
        base += len(lp)
    counts = _all_reduce_sum(counts, process_group)
    sizes = torch.tensor([p.numel() for lp in lp_groups for p in lp], dtype=torch.float64)
    if not torch.equal(counts, sizes):
        bad = int((counts != sizes).nonzero()[0])
        raise BertperfError(f"Lamb under ZeRO: tensor {bad} has {int(counts[bad])} elements in the partitions of "
                            f"all ranks instead of {int(sizes[bad])}; this DeepSpeed layout is not supported")


def attach_zero_lamb(engine: Any) -> bool:
    """Make a bertperf `Lamb` inside `engine`'s ZeRO-1/2 wrapper exact; True if it was attached.

    No-op (False) when the engine's optimizer keeps tensors whole (ZeRO-0, fp32 or bf16) or the
    client optimizer is not a `Lamb`. Call once, right after `deepspeed.initialize`, on every rank
    (it makes one all-reduce to check the layout). BertperfError for ZeRO-3, optimizer offload and
    param groups on different process groups.
    """
    wrapper = getattr(engine, "optimizer", None)
    lamb = getattr(wrapper, "optimizer", None)
    if not isinstance(lamb, Lamb) or isinstance(wrapper, Lamb):
        return False
    from deepspeed.runtime.zero.stage3 import DeepSpeedZeroOptimizer_Stage3

    if isinstance(wrapper, DeepSpeedZeroOptimizer_Stage3):
        raise BertperfError("Lamb under ZeRO-3 is not supported: its trust ratios would be taken on parameter "
                            "slices; use zero_optimization.stage 1 or 2 (exact), or AdamW")
    layout = _wrapper_layout(wrapper)
    if layout is None:
        return False
    lp_groups, flats, copies, pgs = layout
    if any(pg is not pgs[0] for pg in pgs):
        raise BertperfError("Lamb under ZeRO: param groups on different data-parallel groups (MoE experts) "
                            "are not supported")
    if len(lamb.param_groups) != len(flats):
        raise BertperfError(f"Lamb under ZeRO: {len(lamb.param_groups)} param groups but {len(flats)} partitions")
    partitions = [GroupPartition(flat=flat, fragments=_fragments(lp, flat), num_tensors=len(lp), model_copy=copy)
                  for lp, flat, copy in zip(lp_groups, flats, copies)]
    _check_tiling(lp_groups, partitions, pgs[0])
    for part in partitions:
        lamb.state_for(part.flat)  # now, so DeepSpeed links every group's moments after its first step
    for group, part in zip(lamb.param_groups, partitions):
        if len(group["params"]) != 1 or group["params"][0] is not part.flat:
            raise BertperfError("Lamb under ZeRO: the optimizer's param groups do not hold DeepSpeed's partitions")
    lamb.partitioned_step = PartitionedLambStep(partitions, pgs[0])
    log.debug("exact ZeRO Lamb attached: %d groups, %d fragments on this rank", len(partitions),
              sum(len(p.fragments) for p in partitions))
    return True
