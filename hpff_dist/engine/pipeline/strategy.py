"""``LocalPipelineStrategy``: local modules in parallel across processes, with DeepSpeed ZeRO
over each stage's replicas.

``strategy=dict(pipeline=dict(stages=P, micro_batches=M), zero_optimization=dict(stage=1))``
on ``P x D`` processes. Every process builds the whole model (same seed, weights broadcast),
then keeps only its stage's modules (``LocalLearner.keep_modules``) and trains them with the
pipeline schedule of ``hpff_dist.local.pipeline``. DeepSpeed runs per stage: its data-parallel
group is the stage's D replicas (gradients reduced there, ZeRO 1/2 partitions there), its
model-parallel group the replica's P stages (``grid.DeepSpeedGrid``), so:

* gradient clipping sees the whole model's norm (DeepSpeed sums the squared norms of
  model-parallel parameters over that group; every parameter here is marked so);
* each stage writes its own ``mp_rank_<stage>_model_states.pt`` (and its ZeRO partitions) into
  the checkpoint directory, resumes from it, and ``tools/convert_checkpoint.py`` merges them.

Why DeepSpeed and not DDP for the replicas: DeepSpeed takes the stage's group as its
data-parallel group (``mpu``), reduces once per optimizer step as the rest of the framework
does, and adds ZeRO; DDP would reduce inside each of the many backward calls of a step.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.distributed as torch_dist
from mmengine.logging import print_log
from torch import nn

from hpff_dist.engine.changes import ChangeRecorder
from hpff_dist.engine.checkpoint import stage_states_file
from hpff_dist.engine.deepspeed.policy import DeepSpeedConfigError
from hpff_dist.engine.deepspeed.strategy import LocalDeepSpeedStrategy
from hpff_dist.engine.pipeline.grid import DeepSpeedGrid, PipelineGrid
from hpff_dist.engine.pipeline.wrappers import LocalPipelineEngineWrapper
from hpff_dist.local.backward import PlainBackward
from hpff_dist.local.levels import refuse_unknown_keys
from hpff_dist.local.pipeline import (
    MicroBatch,
    PipelineStage,
    StageLink,
    balanced_stages,
    module_costs,
    stage_bounds_from_sizes,
)
from hpff_dist.registry import STRATEGIES

__all__ = [
    "CHECKPOINT_PIPELINE_KEY",
    "LocalPipelineStrategy",
    "PIPELINE_KEYS",
]

#: where a checkpoint's meta records the stages it was written with
CHECKPOINT_PIPELINE_KEY = "pipeline"
#: keys of ``strategy.pipeline``
PIPELINE_KEYS = ("stages", "micro_batches", "stage_modules", "balance")
_BALANCE = ("measured", "even")
_BY = "LocalPipelineStrategy"


def check_pipeline_cfg(pipeline: Any) -> dict[str, Any]:
    """``strategy.pipeline`` with defaults, or a ``DeepSpeedConfigError`` naming the problem."""
    if not isinstance(pipeline, dict):
        raise DeepSpeedConfigError(
            f"strategy.pipeline must be a dict like dict(stages=2, micro_batches=8), got {pipeline!r}"
        )
    try:
        refuse_unknown_keys("strategy.pipeline", pipeline, PIPELINE_KEYS)
    except ValueError as err:
        raise DeepSpeedConfigError(str(err)) from None
    out = {**dict(stages=1, micro_batches=1, stage_modules=None, balance="measured"), **pipeline}
    for key in ("stages", "micro_batches"):
        if not isinstance(out[key], int) or out[key] < 1:
            raise DeepSpeedConfigError(
                f"strategy.pipeline.{key} must be an int >= 1, got {out[key]!r}"
            )
    if out["balance"] not in _BALANCE:
        raise DeepSpeedConfigError(
            f"strategy.pipeline.balance must be one of {_BALANCE}, got {out['balance']!r}"
        )
    sizes = out["stage_modules"]
    if sizes is not None and len(sizes) != out["stages"]:
        raise DeepSpeedConfigError(
            f"strategy.pipeline.stage_modules={list(sizes)} names {len(sizes)} stages, "
            f"stages={out['stages']}"
        )
    return out


@STRATEGIES.register_module()
class LocalPipelineStrategy(LocalDeepSpeedStrategy):
    """``LocalDeepSpeedStrategy`` over a grid of P pipeline stages x D replicas (see the module).

    ``pipeline`` keys: ``stages`` (P), ``micro_batches`` (M, the per-replica batch is cut into
    M), ``stage_modules`` (modules per stage, e.g. ``[28, 27]``; default: balanced),
    ``balance`` (``'measured'``: rank 0 times every module's local step on one micro-batch and
    the stages minimise the slowest one; ``'even'``: equal module counts).
    """

    engine_wrapper_type = LocalPipelineEngineWrapper

    def __init__(self, *, pipeline: dict, **kwargs: Any) -> None:
        self.pipeline = check_pipeline_cfg(pipeline)
        self.grid: PipelineGrid | None = None
        super().__init__(**kwargs)

    # ------------------------------------------------------------------ the grid
    def _the_grid(self) -> PipelineGrid:
        if self.grid is None:
            if not torch_dist.is_initialized():
                raise RuntimeError("the pipeline's process groups need the process group first")
            self.grid = PipelineGrid.of_world(
                self.pipeline["stages"], torch_dist.get_world_size(), torch_dist.get_rank()
            ).create_groups()
        return self.grid

    def _dist_world_size(self) -> int:
        """Data-parallel world size: the replicas (DeepSpeed's batch arithmetic)."""
        return self._the_grid().replicas

    def _deepspeed_mpu(self) -> Any:
        return DeepSpeedGrid(self._the_grid())

    def _bn_group(self) -> Any:
        return self._the_grid().dp_group

    def _states_file(self) -> str:
        return stage_states_file(self._the_grid().stage)

    def save_checkpoint(self, filename: str, **kwargs: Any) -> None:
        """The base save, with the stage layout in the meta: a resumed run must cut the model
        where this one did (a measured balance can differ from run to run)."""
        extra = kwargs.get("extra_ckpt") or {}
        meta = extra.setdefault("meta", {})
        meta[CHECKPOINT_PIPELINE_KEY] = dict(
            stages=self.pipeline["stages"], stage_modules=list(self.pipeline["stage_modules"])
        )
        kwargs["extra_ckpt"] = extra
        super().save_checkpoint(filename, **kwargs)

    # ------------------------------------------------------------------ the stage
    def _init_model_weights(self, model: nn.Module) -> nn.Module:
        """Initialise (and broadcast) the whole model, then keep this stage's modules."""
        model = super()._init_model_weights(model)
        self._cut_to_stage(model)
        return model

    def _cut_to_stage(self, model: nn.Module) -> None:
        learner = getattr(model, "learner", None)
        if learner is None or not getattr(learner, "local_modules", None):
            raise DeepSpeedConfigError(
                "strategy.pipeline needs a local-learning model (K > 1 local modules); an "
                "end-to-end model has nothing to pipeline: drop strategy.pipeline"
            )
        if learner.spec.schedule != "one_forward":
            raise DeepSpeedConfigError(
                f"strategy.pipeline runs the one-forward schedule; method.schedule="
                f"{learner.spec.schedule!r} is not pipelined"
            )
        if learner.taps:
            raise DeepSpeedConfigError(
                "strategy.pipeline does not support taps (mmseg aux heads) yet"
            )
        grid = self._the_grid()
        k = len(learner.local_modules)
        if grid.stages > k:
            raise DeepSpeedConfigError(
                f"strategy.pipeline.stages={grid.stages} exceeds the {k} local modules"
            )
        bounds = self._stage_bounds(model, learner)
        start, end = bounds[grid.stage]
        nxt = learner.local_modules[end] if end < k else None
        link = StageLink(
            grid.stage,
            grid.stages,
            grid.prev_rank,
            grid.next_rank,
            receives_cascade=nxt is not None and nxt.sends_cascade,
            group=grid.act_group,
            pipe_group=grid.pipe_group,
            last_rank=grid.last_rank,
            h_group=grid.h_group,
        )
        learner.keep_modules(start, end)
        learner.pipeline = PipelineStage(link, self.pipeline["micro_batches"])
        for param in model.parameters():
            # Disjoint per stage, as tensor-parallel shards are: DeepSpeed then adds every
            # stage's squared gradient norm over the model-parallel group (clipping).
            param.model_parallel = True
        if torch_dist.get_rank() == 0:
            print_log(
                f"pipeline: {grid.stages} stages x {grid.replicas} replicas, "
                f"{self.pipeline['micro_batches']} micro-batches per replica batch; local "
                f"modules per stage {[b - a for a, b in bounds]} (ranges {bounds})",
                logger="current",
            )

    def _stage_bounds(self, model: nn.Module, learner: Any) -> list[tuple[int, int]]:
        """Stage ranges from ``stage_modules``, or balanced (rank 0 decides, all agree)."""
        k, stages = len(learner.local_modules), self.pipeline["stages"]
        if self.pipeline["stage_modules"] is not None:
            bounds = stage_bounds_from_sizes(self.pipeline["stage_modules"], k)
            self.pipeline["stage_modules"] = [b - a for a, b in bounds]
            return bounds
        bounds: list[Any] = [None]
        costs: list[float] = []
        if torch_dist.get_rank() == 0:
            if self.pipeline["balance"] == "even" or stages == 1:
                costs = [1.0] * k
            else:
                costs = self._measure_costs(model)
            bounds[0] = balanced_stages(costs, stages)
        torch_dist.broadcast_object_list(bounds, src=0)
        sizes = [b - a for a, b in bounds[0]]

        def record(recorder: ChangeRecorder) -> None:
            why = f"balance={self.pipeline['balance']!r}: the stages minimise the slowest one" + (
                f" (measured seconds per module: {[round(c, 5) for c in costs]})" if costs else ""
            )
            recorder.set(
                self.pipeline, "stage_modules", sizes, why, "strategy.pipeline.stage_modules"
            )

        self._report(record)
        return [tuple(b) for b in bounds[0]]

    def _measure_costs(self, model: nn.Module) -> list[float]:
        """Each module's local-step seconds on one random micro-batch, on a copy of the model
        (the run's weights, statistics and gradients stay untouched)."""
        probe = copy.deepcopy(model.learner)
        probe.train()
        if torch.cuda.is_available():  # time it where it will run
            probe.cuda()
        size = probe.image_size
        if size is None:
            raise DeepSpeedConfigError(
                "strategy.pipeline.balance='measured' needs the model's image_size (to make a probe "
                "batch); set model.image_size, or strategy.pipeline.stage_modules / balance='even'"
            )
        per_device = int((self.dispatch_kwargs or {}).get("train_micro_batch_size_per_gpu") or 2)
        n = max(2, per_device // self.pipeline["micro_batches"])
        first = next(probe.parameters())
        g = torch.Generator().manual_seed(0)
        images = torch.randn(n, probe.image_channels, *size, generator=g).to(first)
        targets = torch.randint(0, probe.num_classes, (n,), generator=g).to(first.device)
        image = torch.rand(n, probe.image_channels, *size, generator=g).to(first)
        costs = module_costs(
            probe.local_modules, MicroBatch(images, targets, image, 1.0), PlainBackward()
        )
        del probe
        return costs
