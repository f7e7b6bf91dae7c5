"""Epoch-based training loop that resumes mid-epoch at the right batch.

mmengine's ``EpochBasedTrainLoop`` restores ``epoch`` and ``iter`` from a checkpoint but then
replays the interrupted epoch from its first batch, so a run resumed from an iteration
checkpoint trains more steps, on different data, than the uninterrupted run. Here the first
epoch after resuming skips the batches already trained (the sampler order depends only on the
seed and epoch, which ``DistSamplerSeedHook`` restores), so interrupted + resumed equals
uninterrupted. Skipped batches are still loaded; on a cluster that costs seconds.
"""

from __future__ import annotations

from mmengine.logging import print_log

from hpff_dist.engine.mmengine_runner import EpochBasedTrainLoop
from hpff_dist.registry import LOOPS


@LOOPS.register_module()
class ResumableEpochBasedTrainLoop(EpochBasedTrainLoop):
    """``EpochBasedTrainLoop`` whose epoch starts at ``iter - epoch * len(dataloader)``."""

    def run_epoch(self) -> None:
        skip = self._iter - self._epoch * len(self.dataloader)
        if skip <= 0:
            return super().run_epoch()
        print_log(
            f"resuming epoch {self._epoch} at batch {skip} of {len(self.dataloader)}",
            logger="current",
        )
        self.runner.call_hook("before_train_epoch")
        self.runner.model.train()
        for idx, data_batch in enumerate(self.dataloader):
            if idx < skip:
                continue
            self.run_iter(idx, data_batch)
        self.runner.call_hook("after_train_epoch")
        self._epoch += 1
