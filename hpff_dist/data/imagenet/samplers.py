"""A distributed sampler for shard-backed map-style datasets (wids): exact, equal, shard-local.

``wids.DistributedChunkedSampler`` would fit, but in wids 0.1.11 it ignores ``rank``/``num_replicas``
without a process group and gives the last rank fewer samples than its ``__len__`` when the
dataset does not divide evenly (ranks would then run different step counts and hang). This
sampler keeps wids' idea (shuffle shard order, shuffle within a shard, so each DataLoader worker
reads few shards) and torch's ``DistributedSampler`` contract (``ceil(N / world)`` per rank, short
ranks padded by wrapping around, reshuffled by ``set_epoch``). Unshuffled (evaluation), the
split is interleaved like ``DefaultSampler``'s, the one mmengine's result collection undoes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from hpff_dist.data.imagenet.ranks import resolve_rank, samples_per_rank
from hpff_dist.data.sample_seeds import SeededIndices
from hpff_dist.registry import DATA_SAMPLERS


class _ShardAwareOrder(Sampler[int]):
    """Indices of this rank for one epoch: shard order and within-shard order seeded by epoch."""

    def __init__(
        self,
        dataset,
        shuffle: bool = True,
        seed: int | None = 0,
        rank: int | None = None,
        world_size: int | None = None,
        shard_lengths: Sequence[int] | None = None,
        stages: int = 1,
    ) -> None:
        self.rank, self.world_size = resolve_rank(rank, world_size)
        if stages < 1 or self.world_size % stages:
            raise ValueError(
                f"pipeline stages={stages} must divide the world size {self.world_size}"
            )
        # A pipelined run (``stages`` > 1): the P stages of a replica read the same samples
        # (hpff_dist.data.replica_sampler), so the split is by replica.
        self.rank, self.world_size = self.rank // stages, self.world_size // stages
        lengths = list(shard_lengths if shard_lengths is not None else dataset.shard_lengths)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(int)
        self.ranges = [(int(s), int(s) + int(n)) for s, n in zip(starts, lengths) if n > 0]
        self.num_samples_total = int(sum(lengths))
        if self.num_samples_total == 0:
            raise ValueError("ShardAwareDistributedSampler: the dataset has no samples")
        self.num_samples = samples_per_rank(self.num_samples_total, self.world_size)
        self.shuffle = shuffle
        self.seed = 0 if seed is None else int(seed)  # every rank must draw the same order
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_order(self) -> np.ndarray:
        """All indices of the epoch, padded to a multiple of ``world_size``."""
        rng = np.random.default_rng([self.seed, self.epoch])
        ranges = (
            [self.ranges[i] for i in rng.permutation(len(self.ranges))]
            if self.shuffle
            else self.ranges
        )
        parts = [
            rng.permutation(np.arange(lo, hi)) if self.shuffle else np.arange(lo, hi)
            for lo, hi in ranges
        ]
        order = np.concatenate(parts)
        padding = self.num_samples * self.world_size - len(order)
        return np.concatenate([order, np.resize(order, padding)]) if padding else order

    def __iter__(self) -> Iterator[int]:
        order = self.global_order()
        if not self.shuffle:
            # evaluation: mmengine collects the ranks' results interleaved and keeps the first
            # N, which undoes exactly this split (a contiguous one would lose real samples)
            return iter(order[self.rank :: self.world_size].tolist())
        # training: contiguous slices keep each rank on few shards (wids' LRU of open shards)
        start = self.rank * self.num_samples
        return iter(order[start : start + self.num_samples].tolist())

    def __len__(self) -> int:
        return self.num_samples


@DATA_SAMPLERS.register_module()
class ShardAwareDistributedSampler(SeededIndices, _ShardAwareOrder):
    """:class:`_ShardAwareOrder`'s indices, each with its augmentation seed
    (:mod:`hpff_dist.data.sample_seeds`), so augmentations do not depend on workers or resumes."""
