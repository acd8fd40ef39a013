"""The distributed sampler: disjoint across ranks, covers the data, resumes exactly."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from bertperf.train.sampler import DistributedShuffleSampler, SamplerState
from bertperf.utils.errors import BertperfError


def take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


@pytest.mark.parametrize("n,world", [(10, 2), (11, 2), (7, 3), (64, 4), (5, 1), (3, 3)])
def test_epoch_disjoint_and_covering(n, world):
    rounds = n // world
    samplers = [DistributedShuffleSampler(n, r, world, seed=7) for r in range(world)]
    per_rank = [take(s, rounds) for s in samplers]
    flat = [i for ids in per_rank for i in ids]
    assert len(set(flat)) == len(flat) == rounds * world  # disjoint
    perm = np.random.default_rng([7, 0]).permutation(n)
    assert set(flat) == set(perm[: rounds * world].tolist())  # covers all but the n mod world tail
    if n % world == 0:
        assert set(flat) == set(range(n))
    for r in range(world):  # round k of rank r is perm[k * world + r]
        assert per_rank[r] == perm[r::world][:rounds].tolist()


def test_epochs_reshuffle_and_are_deterministic():
    a = take(DistributedShuffleSampler(20, 0, 2, seed=1), 30)
    b = take(DistributedShuffleSampler(20, 0, 2, seed=1), 30)
    c = take(DistributedShuffleSampler(20, 0, 2, seed=2), 30)
    assert a == b and a != c
    assert a[:10] != a[10:20]  # epoch 1 is a different order
    assert sorted(a[:10] + take(DistributedShuffleSampler(20, 1, 2, seed=1), 10)) == list(range(20))


@pytest.mark.parametrize("n,world,rounds", [(10, 2, 3), (10, 2, 5), (11, 2, 12), (9, 3, 7), (100, 4, 0)])
def test_resume_continues_exactly(n, world, rounds):
    for r in range(world):
        full = DistributedShuffleSampler(n, r, world, seed=3)
        stream = take(full, rounds + 15)
        state = full.advance(SamplerState(), rounds)
        resumed = DistributedShuffleSampler(n, r, world, seed=3, state=state)
        assert take(resumed, 15) == stream[rounds:]
        # advancing in pieces gives the same state as in one go
        assert full.advance(full.advance(SamplerState(), rounds // 2), rounds - rounds // 2) == state


def test_state_round_trip_and_epoch_rollover():
    s = DistributedShuffleSampler(10, 0, 2, seed=0)
    st = s.advance(SamplerState(), 12)  # 5 rounds per epoch -> epoch 2, round 2
    assert st == SamplerState(epoch=2, offset=4)
    assert SamplerState.from_dict(st.to_dict()) == st


def test_resume_with_another_world_size_skips_nothing_already_seen():
    n = 12
    seen = take(DistributedShuffleSampler(n, 0, 2, seed=5), 3) + take(DistributedShuffleSampler(n, 1, 2, seed=5), 3)
    state = DistributedShuffleSampler(n, 0, 2, seed=5).advance(SamplerState(), 3)  # offset 6
    later = [i for r in range(3) for i in take(DistributedShuffleSampler(n, r, 3, seed=5, state=state), 2)]
    assert not set(seen) & set(later)
    assert sorted(seen + later) == list(range(n))


def test_too_few_samples():
    with pytest.raises(BertperfError, match="fewer than the 4 ranks"):
        DistributedShuffleSampler(3, 0, 4, seed=0)
