"""The model wrapper of a pipeline stage (no DeepSpeed import: the registry may load it)."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as torch_dist

from hpff_dist.engine.deepspeed.wrappers import LocalDeepSpeedEngineWrapper
from hpff_dist.registry import MODEL_WRAPPERS

__all__ = ["LocalPipelineEngineWrapper"]


@MODEL_WRAPPERS.register_module()
class LocalPipelineEngineWrapper(LocalDeepSpeedEngineWrapper):
    """The engine wrapper of a pipeline stage: after the step, the stages' logs are merged, so
    every rank (rank 0 writes the log) reports the whole model's losses: ``loss_*`` summed over
    the stages' modules, the task's values (``ce_last``, ``acc``) from the last stage, and the
    per-module losses of every stage for the local-loss curves."""

    def train_step(self, data: Any, optim_wrapper: Any) -> dict:
        log_vars = super().train_step(data, optim_wrapper)
        module = self.module
        link = module.learner.pipeline.link
        if link.stages == 1:
            return log_vars
        mine = (
            {k: v.detach().float().cpu() for k, v in log_vars.items()},
            {k: v.detach().float().cpu() for k, v in getattr(module, "local_losses", {}).items()},
        )
        gathered: list[Any] = [None] * link.stages
        torch_dist.all_gather_object(gathered, mine, group=link.pipe_group)
        merged: dict[str, torch.Tensor] = {}
        curves: dict[str, torch.Tensor] = {}
        for stage_logs, stage_curves in gathered:
            for key, value in stage_logs.items():
                if key.startswith("loss_") and key in merged:
                    merged[key] = merged[key] + value
                else:
                    merged[key] = value
            curves.update(stage_curves)
        device = next(iter(log_vars.values())).device if log_vars else "cpu"
        module.local_losses = curves
        return {k: v.to(device) for k, v in merged.items()}
