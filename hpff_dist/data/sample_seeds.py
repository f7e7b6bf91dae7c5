"""Augmentation randomness as a function of (seed, epoch, sample index), not of worker processes.

Why: random transforms draw from the global RNG of whichever process runs them. A DataLoader
worker's RNG is seeded once and then carries its state from sample to sample and, with
``persistent_workers``, from epoch to epoch; which samples a worker sees depends on
``num_workers``. So a run resumed in epoch 2 (fresh workers, re-seeded) sees other augmentations
than the uninterrupted run, and 2 or 4 workers give different batches.

Here the sampler hands each index out with its own seed (:class:`SeededIndex`), and the dataset
(:class:`SeededItems`) runs its transforms under that seed with the process's RNG state saved
and restored around them. A sample's augmentation is then fixed by (seed, epoch, index): the
same with 0, 2 or 4 workers, persistent or not, resumed or not, on whichever rank sees it, and
different in every epoch. The seeded RNGs are torch's CPU generator, numpy's global one and
Python's ``random`` (what torchvision and mmcv/mmseg transforms draw from).

:class:`SeededSampler` (mmengine's ``DefaultSampler`` + seeds) is what the shipped training
loaders use; it can also start an epoch at a given position (:meth:`SeededIndices.start_at`),
so a run resumed mid-epoch skips the trained batches without loading them.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import numpy as np
import torch
from mmengine.dataset import DefaultSampler

from hpff_dist.registry import DATA_SAMPLERS

__all__ = ["SeededIndex", "SeededIndices", "SeededItems", "SeededSampler", "sample_seed"]

_MASK64 = (1 << 64) - 1


class SeededIndex(NamedTuple):
    """A dataset index and the seed its random transforms run under."""

    index: int
    seed: int


def _mix64(value: int) -> int:
    """SplitMix64's finaliser: nearby inputs give unrelated 64-bit outputs."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of sample ``index`` in ``epoch`` of a run seeded ``seed``
    (63 bits: what ``torch.Generator.manual_seed`` takes)."""
    return _mix64(_mix64(_mix64(int(seed)) ^ int(epoch)) ^ int(index)) >> 1


@contextmanager
def seeded_randomness(seed: int) -> Iterator[None]:
    """Seed torch's CPU generator, numpy's and Python's global RNGs for the block, then put
    their states back: the process's own random stream (dropout in the main process with
    ``num_workers=0``) is untouched. CUDA generators are never touched."""
    generator = torch.default_generator
    saved = generator.get_state(), np.random.get_state(), random.getstate()
    generator.manual_seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)
    random.seed(seed)
    try:
        yield
    finally:
        generator.set_state(saved[0])
        np.random.set_state(saved[1])
        random.setstate(saved[2])


class SeededItems:
    """Dataset mixin: ``__getitem__`` accepts a :class:`SeededIndex` and runs
    :meth:`load_item` under its seed; a plain ``int`` index loads as before (global RNG)."""

    def load_item(self, index: int) -> Any:
        raise NotImplementedError

    def __getitem__(self, key: int | SeededIndex) -> Any:
        if isinstance(key, SeededIndex):
            with seeded_randomness(key.seed):
                return self.load_item(key.index)
        return self.load_item(int(key))


class SeededIndices:
    """Sampler mixin: the indices of the wrapped sampler's ``__iter__`` as
    :class:`SeededIndex` (needs ``self.seed`` and ``self.epoch``), from an optional start
    position."""

    _start = 0

    def start_at(self, position: int) -> None:
        """Make the next epoch's iteration begin at ``position`` (a resumed run skips the
        ``position`` samples it already trained on; the order is the same as without)."""
        self._start = int(position)

    def __iter__(self) -> Iterator[SeededIndex]:
        start, self._start = self._start, 0
        seed, epoch = int(self.seed), int(self.epoch)
        for position, index in enumerate(super().__iter__()):
            if position >= start:
                yield SeededIndex(int(index), sample_seed(seed, epoch, int(index)))


@DATA_SAMPLERS.register_module()
class SeededSampler(SeededIndices, DefaultSampler):
    """mmengine's ``DefaultSampler`` (same order, same rank split, same ``set_epoch``) whose
    indices carry their augmentation seed (:func:`sample_seed`). Needs a dataset with
    :class:`SeededItems`; the framework's datasets have it."""

    def __init__(self, dataset: Any, shuffle: bool = True, seed: int | None = None,
                 round_up: bool = True) -> None:  # fmt: skip
        if not isinstance(dataset, SeededItems):
            raise TypeError(
                f"SeededSampler hands out SeededIndex keys, which {type(dataset).__name__} "
                "does not read: derive the dataset from hpff_dist.data.sample_seeds.SeededItems "
                "(implement load_item(index)), or use DefaultSampler"
            )
        super().__init__(dataset, shuffle=shuffle, seed=seed, round_up=round_up)
