"""Global rank and world size for data sharding, with explicit arguments winning.

Tests and tools pass ``rank``/``world_size`` directly (no process group); a torchrun or SLURM job
has an initialised process group or at least ``RANK``/``WORLD_SIZE`` in the environment.
"""

from __future__ import annotations

import os

import torch.distributed as dist


def resolve_rank(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """Return ``(rank, world_size)``: arguments, else torch.distributed, else env, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        default_rank, default_world = dist.get_rank(), dist.get_world_size()
    else:
        default_rank = int(os.environ.get("RANK", 0))
        default_world = int(os.environ.get("WORLD_SIZE", 1))
    rank = default_rank if rank is None else int(rank)
    world_size = default_world if world_size is None else int(world_size)
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
    return rank, world_size


def samples_per_rank(num_samples: int, world_size: int) -> int:
    """Samples each rank sees per epoch: ``ceil(N / world_size)``, short ranks padded.

    All three backends use this count (as ``torch.utils.data.DistributedSampler`` does), so every
    rank runs the same number of steps and a distributed run cannot hang on uneven shards.
    """
    return -(-num_samples // world_size)


def check_batch_size(batch_size: int, per_rank: int, drop_last: bool) -> int:
    """Validate the batch size and return the number of batches per rank per epoch."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if drop_last and per_rank < batch_size:
        raise ValueError(
            f"drop_last=True with batch_size={batch_size} > {per_rank} samples per rank would give "
            "an empty epoch; lower the batch size or use fewer ranks"
        )
    return per_rank // batch_size if drop_last else -(-per_rank // batch_size)
