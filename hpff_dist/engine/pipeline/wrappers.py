"""The model wrapper of a pipeline stage (no DeepSpeed import: the registry may load it)."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as torch_dist

from hpff_dist.engine.deepspeed.wrappers import LocalDeepSpeedEngineWrapper
from hpff_dist.registry import MODEL_WRAPPERS

__all__ = ["LocalPipelineEngineWrapper", "merge_stage_logs"]


def merge_stage_logs(per_stage: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The whole model's log from the stages' logs: ``loss_*`` summed over the stages (each
    holds its modules' sum), the other values (``ce_last``, ``acc``, ``m03/ind`` ...) from the
    stage that has them (the task's values from the last stage)."""
    merged: dict[str, torch.Tensor] = {}
    for logs in per_stage:
        for key, value in logs.items():
            if key.startswith("loss_") and key in merged:
                merged[key] = merged[key] + value
            else:
                merged[key] = value
    return merged


@MODEL_WRAPPERS.register_module()
class LocalPipelineEngineWrapper(LocalDeepSpeedEngineWrapper):
    """The engine wrapper of a pipeline stage: every rank (rank 0 writes the log) reports the
    whole model's losses and per-module curves (:func:`merge_stage_logs`).

    **One step late.** The stages' values travel in an asynchronous all-gather over the
    replica's stages, started after each step and read after the next: a blocking merge would
    make stage 0 wait at every step for the last stage to finish (a pipeline fill per step:
    16 % and 32 % of a step in two paired runs on this machine's 2 cores, M=4), while the pipeline otherwise lets
    stage 0 run ahead into the next batch. So the values logged at iteration t are those of
    iteration t-1 (the first iteration logs stage 0's own values only)."""

    def __init__(self, *, model: Any, inputs_to_half: list | None = None) -> None:
        super().__init__(model=model, inputs_to_half=inputs_to_half)
        self._layout: list[list[str]] | None = None
        self._in_flight: tuple[Any, list[torch.Tensor]] | None = None

    def train_step(self, data: Any, optim_wrapper: Any) -> dict:
        log_vars = super().train_step(data, optim_wrapper)
        module = self.module
        link = module.learner.pipeline.link
        if link.stages == 1:
            return log_vars
        mine = dict(log_vars)
        mine.update({f"curve:{k}": v for k, v in getattr(module, "local_losses", {}).items()})
        device = next(module.parameters()).device
        if self._layout is None:  # once: which values each stage sends, in which order
            layout: list[Any] = [None] * link.stages
            torch_dist.all_gather_object(layout, sorted(mine), group=link.pipe_group)
            self._layout = layout
        width = max(len(keys) for keys in self._layout)
        flat = torch.zeros(width, dtype=torch.float32, device=device)
        own = self._layout[link.stage]
        if own:
            flat[: len(own)] = torch.stack([mine[k].detach().float().reshape(()) for k in own])
        gathered = [torch.empty_like(flat) for _ in range(link.stages)]
        work = torch_dist.all_gather(gathered, flat, group=link.pipe_group, async_op=True)
        previous, self._in_flight = self._in_flight, (work, gathered)
        if previous is None:
            return log_vars
        work, values = previous
        work.wait()
        per_stage = [
            {key: values[s][i] for i, key in enumerate(keys)} for s, keys in enumerate(self._layout)
        ]
        merged = merge_stage_logs(per_stage)
        module.local_losses = {
            k.removeprefix("curve:"): v for k, v in merged.items() if k.startswith("curve:")
        }
        return {k: v for k, v in merged.items() if not k.startswith("curve:")}
