"""Samplers that split the data over data-parallel *replicas* instead of ranks.

In a pipelined run (``strategy.pipeline``) the P stages of one replica train on the same
batch: stage 0 feeds its images to the first modules, the later stages read its labels (and
the restored image for reconstruction heads). So the split of the dataset is by replica,
``rank // P`` of ``world_size // P``, and the P ranks of a replica draw identical indices (and,
through ``SeededSampler``'s per-sample seeds, identical augmentations). ``stages=1`` is the
plain sampler.
"""

from __future__ import annotations

import math
from typing import Any

from mmengine.dataset import DefaultSampler
from mmengine.dist import get_dist_info

from hpff_dist.data.sample_seeds import SeededSampler
from hpff_dist.registry import DATA_SAMPLERS

__all__ = ["ReplicaDefaultSampler", "ReplicaSeededSampler", "split_by_replica"]


def split_by_replica(sampler: DefaultSampler, stages: int) -> None:
    """Re-split an mmengine ``DefaultSampler`` (or subclass) by replica, with its own rules for
    ``round_up`` (every replica gets ``ceil(N / D)`` indices, padded) or not."""
    rank, world = get_dist_info()
    if stages < 1 or world % stages:
        raise ValueError(
            f"pipeline stages={stages} must divide the world size {world} (P stages x D replicas)"
        )
    replicas, replica = world // stages, rank // stages
    sampler.rank, sampler.world_size = replica, replicas
    n = len(sampler.dataset)
    if sampler.round_up:
        sampler.num_samples = math.ceil(n / replicas)
        sampler.total_size = sampler.num_samples * replicas
    else:
        sampler.num_samples = math.ceil((n - replica) / replicas)
        sampler.total_size = n
    sampler.stages = stages


@DATA_SAMPLERS.register_module()
class ReplicaDefaultSampler(DefaultSampler):
    """mmengine's ``DefaultSampler`` split by replica (see the module docstring)."""

    def __init__(self, dataset: Any, shuffle: bool = True, seed: int | None = None,
                 round_up: bool = True, stages: int = 1) -> None:  # fmt: skip
        super().__init__(dataset, shuffle=shuffle, seed=seed, round_up=round_up)
        split_by_replica(self, stages)


@DATA_SAMPLERS.register_module()
class ReplicaSeededSampler(SeededSampler):
    """``SeededSampler`` split by replica (see the module docstring)."""

    def __init__(self, dataset: Any, shuffle: bool = True, seed: int | None = None,
                 round_up: bool = True, stages: int = 1) -> None:  # fmt: skip
        super().__init__(dataset, shuffle=shuffle, seed=seed, round_up=round_up)
        split_by_replica(self, stages)
