"""Training loops that resume at the batch they stopped: mid-epoch, or mid-pass over the data.

mmengine's ``EpochBasedTrainLoop`` restores ``epoch`` and ``iter`` from a checkpoint but then
replays the interrupted epoch from its first batch, so a run resumed from an iteration
checkpoint trains more steps, on different data, than the uninterrupted run. Here the first
epoch after resuming starts at the batch it stopped: the sampler order depends only on the seed
and epoch (``DistSamplerSeedHook`` restores both) and each sample's augmentation only on (seed,
epoch, index) (:mod:`hpff_dist.data.sample_seeds`), so interrupted + resumed equals
uninterrupted. A sampler with ``start_at`` (``SeededSampler``, ``ShardAwareDistributedSampler``)
skips the trained samples without loading them; with another sampler the skipped batches are
loaded and dropped.

``ResumableIterBasedTrainLoop`` does the same for iteration-based schedules (mmseg's 40k
iterations): the loader is cycled pass after pass, pass ``p`` with the sampler's epoch ``p``, and
a resumed run starts at batch ``iter % len`` of pass ``iter // len`` instead of loading every
trained batch again. In both loops the model randomness (DeepLab's and the dense local heads' Dropout2d) is a
function of (seed, iteration, rank) too: each iteration seeds the process's generators
(:func:`iteration_seed`), so a resumed run draws the dropout masks the uninterrupted one drew;
a checkpoint does not hold the generators' states, and without this the first step after a
resume drops other channels.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
from mmengine.logging import print_log

from hpff_dist.compat import defer_deepspeed_import_in_mmengine
from hpff_dist.data.sample_seeds import sample_seed
from hpff_dist.engine.mmengine_runner import EpochBasedTrainLoop
from hpff_dist.registry import LOOPS

defer_deepspeed_import_in_mmengine()  # before mmengine.runner, as in mmengine_runner.py

from mmengine.runner import IterBasedTrainLoop  # noqa: E402

__all__ = [
    "ResumableEpochBasedTrainLoop",
    "ResumableIterBasedTrainLoop",
    "iteration_seed",
    "seed_iteration",
]

#: mixed into the run's seed for the model's stream: an iteration's seed never equals the
#: augmentation seed ``sample_seed`` gives the same three numbers
_MODEL_STREAM = 0x6D6F64656C


@LOOPS.register_module()
class ResumableEpochBasedTrainLoop(EpochBasedTrainLoop):
    """``EpochBasedTrainLoop`` whose epoch starts at ``iter - epoch * len(dataloader)``; each
    iteration's model randomness (dropout) is seeded by (seed, iteration, rank), as in
    ``ResumableIterBasedTrainLoop``."""

    def run_iter(self, idx: int, data_batch: Any) -> None:
        seed_iteration(self.runner, self._iter)
        super().run_iter(idx, data_batch)

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


@LOOPS.register_module()
class ResumableIterBasedTrainLoop(IterBasedTrainLoop):
    """``IterBasedTrainLoop`` that resumes at batch ``iter % len(dataloader)`` of pass (epoch)
    ``iter // len(dataloader)`` without loading a trained batch.

    mmengine's loop cycles the loader (``set_epoch(pass)`` at each wrap) and, on resume, loads
    and drops all ``iter`` trained batches: 40k Cityscapes iterations are hours of decoding
    before the first step. Here, with a sampler that has ``start_at``, the resumed pass's epoch
    is set and the sampler starts at its first untrained sample: the same batches as the
    uninterrupted run, none loaded twice. Any other sampler (``DefaultSampler``,
    ``InfiniteSampler``, a batch sampler) gets mmengine's replay of every trained batch: the
    batches mmengine's loop would give. ``runner.epoch`` counts completed passes (mmengine's stays
    0), so checkpoints record the pass; the hooks still see one big epoch
    (``before_train_epoch``/``after_train_epoch`` once), as in mmengine.
    """

    #: Seconds to wait before a pass's worker processes start, with ``num_workers > 0``:
    #: mmengine's pause against a deadlock of workers released late at an epoch transition.
    #: Without workers there is nothing to wait for.
    worker_pause_s = 2.0

    def __init__(
        self,
        runner: Any,
        dataloader: Any,
        max_iters: int,
        val_begin: int = 1,
        val_interval: int = 1000,
        dynamic_intervals: list[tuple[int, int]] | None = None,
    ) -> None:
        super().__init__(runner, dataloader, max_iters, val_begin, val_interval, dynamic_intervals)
        # mmengine's iterator of pass 0, started before the resumed iteration is known: let its
        # workers go (non-persistent ones would idle all run); run() makes the right one
        self.dataloader_iterator: Iterator[Any] | None = None

    def run(self) -> Any:
        self.runner.call_hook("before_train")
        self.dataloader_iterator = self._resumed_batches()  # sets the pass (self._epoch)
        self.runner.call_hook("before_train_epoch")  # DistSamplerSeedHook: set_epoch(pass)
        while self._iter < self._max_iters and not self.stop_training:
            self.runner.model.train()
            self.run_iter(next(self.dataloader_iterator))
            self._decide_current_val_interval()
            if (
                self.runner.val_loop is not None
                and self._iter >= self.val_begin
                and (self._iter % self.val_interval == 0 or self._iter == self._max_iters)
            ):
                self.runner.val_loop.run()
        self.runner.call_hook("after_train_epoch")
        self.runner.call_hook("after_train")
        return self.runner.model

    def run_iter(self, data_batch: Any) -> None:
        """One step, its random draws (dropout) seeded by (seed, iteration, rank)."""
        seed_iteration(self.runner, self._iter)
        super().run_iter(data_batch)

    def _resumed_batches(self) -> Iterator[Any]:
        """The batches from iteration ``self._iter`` on, forever; ``self._epoch`` set to the
        pass they start in."""
        loader = self.dataloader
        sampler = getattr(loader, "sampler", None)
        batch_size = getattr(loader, "batch_size", None)
        fast = (
            callable(getattr(sampler, "start_at", None))
            and callable(getattr(sampler, "set_epoch", None))
            and bool(batch_size)
        )
        if fast and len(loader) == 0:
            raise ValueError(
                "train_dataloader has no batch (an empty dataset, or drop_last with fewer "
                "samples than batch_size): an iteration-based loop needs at least one"
            )
        epoch, skip = divmod(self._iter, len(loader)) if fast else (0, self._iter)
        self._epoch = epoch
        _set_sampler_epoch(loader, epoch)  # also without DistSamplerSeedHook
        if fast and self._iter > 0:
            print_log(
                f"resuming iteration {self._iter} at epoch {epoch}, batch {skip} of "
                f"{len(loader)} (the sampler starts there)",
                logger="current",
            )
        elif self._iter > 0:
            print_log(
                f"resuming iteration {self._iter} by loading and dropping the {skip} trained "
                f"batches ({type(sampler).__name__} cannot start mid-pass: no start_at)",
                logger="current",
            )
        if fast:
            sampler.start_at(skip * batch_size)  # the same order, from that sample on
            return self._passes()
        return _dropping_batches(self._passes(), skip)

    def _passes(self) -> Iterator[Any]:
        """The loader's batches pass after pass from the current one; at each wrap the pass
        (``self._epoch``) and the sampler's epoch advance, as mmengine's infinite iterator
        does."""
        loader = self.dataloader
        while True:
            yield from loader
            self._epoch += 1
            _set_sampler_epoch(loader, self._epoch)
            if getattr(loader, "num_workers", 0):
                time.sleep(self.worker_pause_s)


def seed_iteration(runner: Any, iteration: int) -> None:
    """Seed torch (CPU and every CUDA device), numpy and ``random`` for ``iteration``."""
    seed = iteration_seed(runner.seed, iteration, runner.rank)
    torch.manual_seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)
    random.seed(seed)


def iteration_seed(seed: int, iteration: int, rank: int) -> int:
    """The seed of the model's random draws at 0-based ``iteration`` on ``rank`` of a run
    seeded ``seed``: the same after a resume, different on every rank and iteration."""
    return sample_seed(int(seed) ^ _MODEL_STREAM, iteration, rank)


def _set_sampler_epoch(loader: Any, epoch: int) -> None:
    """``set_epoch`` on the loader's sampler, or its batch sampler's (as mmengine does)."""
    for sampler in (
        getattr(loader, "sampler", None),
        getattr(getattr(loader, "batch_sampler", None), "sampler", None),
    ):
        if callable(getattr(sampler, "set_epoch", None)):
            sampler.set_epoch(epoch)
            return


def _dropping_batches(batches: Iterator[Any], skip: int) -> Iterator[Any]:
    for _ in range(skip):
        next(batches)
    yield from batches
