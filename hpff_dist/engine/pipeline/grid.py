"""The 2-D process grid of a pipelined run: P stages x D data-parallel replicas.

Ranks are laid out replica-major, ``rank = replica * P + stage``: the P stages of a replica
are consecutive ranks, so with ``--ntasks-per-node`` a multiple of P they share a node and the
per-micro-batch activations cross NVLink/shared memory, while the once-per-step gradient
reduction of a stage (over its D replicas) is what crosses nodes.

Two kinds of groups: a stage's **data-parallel group** (its D replicas: they reduce that
stage's gradients, through DeepSpeed) and a replica's **pipe group** (its P stages: inference
broadcasts the logits there, and DeepSpeed sums the squared gradient norms over it, so
clipping sees the whole model's norm). ``DeepSpeedGrid`` presents them to DeepSpeed as its
``mpu`` (the model-parallel unit Megatron-style code passes to ``deepspeed.initialize``):
DeepSpeed's "model parallel" dimension is our stage dimension, which also names each stage's
checkpoint file ``mp_rank_<stage>_model_states.pt``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch.distributed as dist

__all__ = ["DeepSpeedGrid", "PipelineGrid"]


@dataclass
class PipelineGrid:
    """Where ``rank`` sits in a grid of ``stages`` x ``replicas`` and its process groups (made
    by :meth:`create_groups`, collectively on every rank)."""

    stages: int
    replicas: int
    rank: int
    dp_group: Any = field(default=None, repr=False)
    pipe_group: Any = field(default=None, repr=False)
    #: the replica's stages again, two groups for the point-to-point messages: activations
    #: forward on one, cascade gradients backward on the other (on NCCL each group is its own
    #: stream, so neither direction queues behind the other)
    act_group: Any = field(default=None, repr=False)
    h_group: Any = field(default=None, repr=False)

    @classmethod
    def of_world(cls, stages: int, world_size: int, rank: int) -> PipelineGrid:
        if stages < 1 or world_size % stages:
            raise ValueError(
                f"strategy.pipeline.stages={stages} must divide the world size {world_size} "
                f"(P stages x D replicas processes); start {stages} x D processes"
            )
        return cls(stages, world_size // stages, rank)

    @property
    def stage(self) -> int:
        return self.rank % self.stages

    @property
    def replica(self) -> int:
        return self.rank // self.stages

    def rank_of(self, replica: int, stage: int) -> int:
        return replica * self.stages + stage

    def dp_ranks(self, stage: int | None = None) -> list[int]:
        stage = self.stage if stage is None else stage
        return [self.rank_of(d, stage) for d in range(self.replicas)]

    def pipe_ranks(self, replica: int | None = None) -> list[int]:
        replica = self.replica if replica is None else replica
        return [self.rank_of(replica, s) for s in range(self.stages)]

    @property
    def prev_rank(self) -> int | None:
        return None if self.stage == 0 else self.rank - 1

    @property
    def next_rank(self) -> int | None:
        return None if self.stage == self.stages - 1 else self.rank + 1

    @property
    def last_rank(self) -> int:
        return self.rank_of(self.replica, self.stages - 1)

    def create_groups(self) -> PipelineGrid:
        """Every rank creates every group, in the same order (``new_group`` is collective)."""
        for stage in range(self.stages):
            group = dist.new_group(self.dp_ranks(stage))
            if stage == self.stage:
                self.dp_group = group
        for replica in range(self.replicas):
            groups = [dist.new_group(self.pipe_ranks(replica)) for _ in range(3)]
            if replica == self.replica:
                self.pipe_group, self.act_group, self.h_group = groups
        return self


class DeepSpeedGrid:
    """The grid as DeepSpeed's ``mpu``: data parallel = the stage's replicas, model parallel =
    the replica's stages (each stage's parameters are disjoint, as tensor-parallel shards are).
    Pipeline methods report 1: DeepSpeed's own pipeline engine is not involved."""

    def __init__(self, grid: PipelineGrid) -> None:
        self.grid = grid

    def get_data_parallel_group(self) -> Any:
        return self.grid.dp_group

    def get_data_parallel_rank(self) -> int:
        return self.grid.replica

    def get_data_parallel_world_size(self) -> int:
        return self.grid.replicas

    def get_data_parallel_group_ranks(self) -> list[int]:
        return self.grid.dp_ranks()

    def get_model_parallel_group(self) -> Any:
        return self.grid.pipe_group

    def get_model_parallel_rank(self) -> int:
        return self.grid.stage

    def get_model_parallel_world_size(self) -> int:
        return self.grid.stages

    def get_model_parallel_src_rank(self) -> int:
        return self.grid.rank_of(self.grid.replica, 0)

    get_tensor_model_parallel_group = get_model_parallel_group
    get_tensor_model_parallel_rank = get_model_parallel_rank
    get_tensor_model_parallel_world_size = get_model_parallel_world_size
    get_tensor_model_parallel_src_rank = get_model_parallel_src_rank

    def get_pipeline_model_parallel_world_size(self) -> int:
        return 1

    def get_pipeline_model_parallel_rank(self) -> int:
        return 0
