"""A hook that SIGKILLs its own training process after a given iteration (imported by test
configs through ``custom_imports``): the hardest interruption, no handler runs, no file is
closed. Priority LOWEST: the iteration's checkpoint, if any, is written first."""

from __future__ import annotations

import os
import signal

from mmengine.hooks import Hook

from hpff_dist.registry import HOOKS


@HOOKS.register_module()
class KillAt(Hook):
    priority = "LOWEST"

    def __init__(self, iteration: int | None = None) -> None:
        self.iteration = iteration

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if self.iteration is not None and runner.iter + 1 == self.iteration:
            os.kill(os.getpid(), signal.SIGKILL)
