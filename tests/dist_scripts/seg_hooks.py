"""Test-only pieces for the segmentation training tests (imported by their configs through
``custom_imports``): mmengine's own iteration loop under a name ``resolve_config`` leaves alone,
a hook counting the training images a run loads, and one saving each rank's weights."""

from __future__ import annotations

import json
import os.path as osp
from typing import Any

import torch
from mmengine.hooks import Hook
from mmengine.runner import IterBasedTrainLoop

from hpff_dist.registry import HOOKS, LOOPS


@LOOPS.register_module()
class MMEngineIterBasedTrainLoop(IterBasedTrainLoop):
    """mmengine's ``IterBasedTrainLoop`` unchanged: ``resolve_config`` turns the name
    ``IterBasedTrainLoop`` into ours, this one it keeps (a user's loop type)."""


@HOOKS.register_module()
class CountLoads(Hook):
    """Counts the training samples this run loads (``load_item`` of the train dataset) and
    writes ``{"loads": N, "first_iter": I}`` to ``WORK_DIR/loads.json`` at the end."""

    def before_train(self, runner) -> None:
        self.first_iter = runner.iter
        self.loads = 0
        dataset = runner.train_loop.dataloader.dataset
        load_item = dataset.load_item

        def counted(index: int) -> Any:
            self.loads += 1
            return load_item(index)

        dataset.load_item = counted  # SeededItems.__getitem__ looks it up on the instance

    def after_train(self, runner) -> None:
        if runner.rank == 0:
            with open(osp.join(runner.work_dir, "loads.json"), "w") as f:
                json.dump({"loads": self.loads, "first_iter": self.first_iter}, f)


@HOOKS.register_module()
class RankStates(Hook):
    """Saves this rank's model state (weights and buffers) before and after training to
    ``WORK_DIR/rank{R}_{before,after}.pt``: the ranks of a data-parallel run must agree."""

    priority = "LOWEST"

    def _save(self, runner, when: str) -> None:
        model = getattr(runner.model, "module", runner.model)
        state = {k: v.detach().clone().cpu() for k, v in model.state_dict().items()}
        torch.save(state, osp.join(runner.work_dir, f"rank{runner.rank}_{when}.pt"))

    def before_train(self, runner) -> None:
        self._save(runner, "before")

    def after_train(self, runner) -> None:
        self._save(runner, "after")
