"""Epoch-based training loop that resumes mid-epoch at the right batch.

mmengine's ``EpochBasedTrainLoop`` restores ``epoch`` and ``iter`` from a checkpoint but then
replays the interrupted epoch from its first batch, so a run resumed from an iteration
checkpoint trains more steps, on different data, than the uninterrupted run. Here the first
epoch after resuming starts at the batch it stopped: the sampler order depends only on the seed
and epoch (``DistSamplerSeedHook`` restores both) and each sample's augmentation only on (seed,
epoch, index) (:mod:`hpff_dist.data.sample_seeds`), so interrupted + resumed equals
uninterrupted. A sampler with ``start_at`` (``SeededSampler``, ``ShardAwareDistributedSampler``)
skips the trained samples without loading them; with another sampler the skipped batches are
loaded and dropped.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

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
        self.runner.call_hook("before_train_epoch")  # sets the sampler's epoch
        self.runner.model.train()
        for idx, data_batch in self._batches_from(skip):
            self.run_iter(idx, data_batch)
        self.runner.call_hook("after_train_epoch")
        self._epoch += 1

    def _batches_from(self, skip: int) -> Iterable[tuple[int, Any]]:
        """``(index, batch)`` of this epoch from batch ``skip`` on."""
        loader = self.dataloader
        sampler = getattr(loader, "sampler", None)
        batch_size = getattr(loader, "batch_size", None)
        fast = callable(getattr(sampler, "start_at", None)) and bool(batch_size)
        how = "the sampler starts there" if fast else "loading and dropping the trained batches"
        print_log(
            f"resuming epoch {self._epoch} at batch {skip} of {len(loader)} ({how})",
            logger="current",
        )
        if fast:
            sampler.start_at(skip * batch_size)  # the same order, from that sample on
            return enumerate(loader, start=skip)
        return _dropping(enumerate(loader), skip)


def _dropping(batches: Iterator[tuple[int, Any]], skip: int) -> Iterator[tuple[int, Any]]:
    for idx, batch in batches:
        if idx >= skip:
            yield idx, batch
