"""A resumable distributed sampler: every rank reads distinct samples, in a seeded shuffled order.

Epoch ``e`` visits the dataset in the order ``perm_e = permutation(N)`` drawn from
``numpy.random.default_rng([seed, e])``, the same on every rank. The order is consumed in
*rounds* of ``world_size`` samples: in round ``k`` rank ``r`` reads ``perm_e[k * world_size + r]``.
So the ranks' samples are disjoint, and together they cover ``floor(N / world_size) *
world_size`` samples per epoch (the last ``N mod world_size`` of the permutation are skipped,
so that every rank takes the same number of steps; they are different samples each epoch).

The position is `SamplerState(epoch, offset)`, where ``offset`` counts the *global* samples of
epoch ``epoch`` already consumed (all ranks together). A sampler built from a saved state
continues with exactly the next samples. Because the offset is global, a run may resume with a
different number of ranks: it then starts at the first full round at or after ``offset``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterator, Mapping

import numpy as np
import torch

from bertperf.utils.errors import BertperfError


@dataclass(frozen=True)
class SamplerState:
    """Position in the sample stream: `epoch`, and `offset` global samples consumed in that epoch."""

    epoch: int = 0
    offset: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SamplerState":
        return cls(epoch=int(d["epoch"]), offset=int(d["offset"]))


class DistributedShuffleSampler(torch.utils.data.Sampler[int]):
    """Infinite stream of dataset indices for one rank (see the module docstring).

    Args:
        num_samples: dataset size N (>= world_size).
        rank, world_size: this rank and the number of ranks.
        seed: shuffling seed; epoch e uses default_rng([seed, e]).
        state: where to start (default: the beginning of epoch 0).

    Iterating yields indices forever, epoch after epoch; `advance` computes the state after a
    number of rounds without iterating, which is what a training loop saves in its checkpoint.
    """

    def __init__(self, num_samples: int, rank: int, world_size: int, seed: int,
                 state: SamplerState = SamplerState()) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        if num_samples < world_size:
            raise BertperfError(f"the data has {num_samples} samples, fewer than the {world_size} ranks; "
                                "create more pre-training instances (bertperf prepare --dupe_factor)")
        self.num_samples = num_samples
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.state = state

    @property
    def rounds_per_epoch(self) -> int:
        """Rounds (one sample per rank each) in an epoch: floor(N / world_size)."""
        return self.num_samples // self.world_size

    def permutation(self, epoch: int) -> np.ndarray:
        """The global visiting order of epoch `epoch`: int64 [N], identical on every rank."""
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)

    def _first_round(self, state: SamplerState) -> int:
        return -(-state.offset // self.world_size)  # ceil: the first full round not yet consumed

    def __iter__(self) -> Iterator[int]:
        epoch, start = self.state.epoch, self._first_round(self.state)
        while True:
            perm = self.permutation(epoch)
            for k in range(start, self.rounds_per_epoch):
                yield int(perm[k * self.world_size + self.rank])
            epoch, start = epoch + 1, 0

    def advance(self, state: SamplerState, rounds: int) -> SamplerState:
        """The state after consuming `rounds` more rounds (rounds * world_size global samples) from `state`."""
        epoch, k = state.epoch, self._first_round(state) + rounds
        epoch += k // self.rounds_per_epoch
        k %= self.rounds_per_epoch
        return SamplerState(epoch=epoch, offset=k * self.world_size)
