"""Errors for ImageNet data, and the budget that decides when bad samples stop a run.

A cluster job reading 1.28M JPEGs will meet a broken file sooner or later; one broken file should
cost one sample, not a 90-epoch run, but a broken copy of the dataset must stop the run early and
name what is broken. The budget is shared by all DataLoader workers of one process (a
``multiprocessing.Value`` survives the fork/spawn of the workers), so ``max_bad_samples`` means the
same thing whatever ``num_workers`` is.
"""

from __future__ import annotations

import logging
import multiprocessing

LOGGER = logging.getLogger("hpff_dist.data.imagenet")

MAKE_SHARDS_HINT = (
    "Shards are made with `python tools/make_shards.py SRC OUT --split train` from an "
    "ImageNet-layout folder (SRC/train/<wnid>/*.JPEG, SRC/val/<wnid>/*.JPEG); see docs/data.md."
)


class DataNotFoundError(FileNotFoundError):
    """The data a loader was pointed at is missing; the message says what to put where."""


class BadSampleError(RuntimeError):
    """More bad samples than the configured budget: the data itself needs fixing."""


class BadSampleBudget:
    """Counts distinct bad samples across worker processes; raises once more than
    ``max_bad_samples`` are bad.

    With ``num_samples`` (the dataset's length) and the sample's ``index`` given to
    :meth:`report`, a sample is counted once however often it is read: a 40k-iteration run
    passes over Cityscapes about 100 times, and one corrupt PNG must not spend the budget of ten.
    The marks live in shared memory, so DataLoader workers see each other's.
    """

    def __init__(self, max_bad_samples: int = 0, num_samples: int | None = None) -> None:
        if max_bad_samples < 0:
            raise ValueError(f"max_bad_samples must be >= 0, got {max_bad_samples}")
        self.max_bad_samples = max_bad_samples
        self._count = multiprocessing.Value("i", 0)
        self._seen = multiprocessing.Array("b", num_samples, lock=False) if num_samples else None

    @property
    def count(self) -> int:
        return self._count.value

    def report(
        self, shard: str, key: str, error: BaseException | str, index: int | None = None
    ) -> None:
        """Log one bad sample (shard + key); raise :class:`BadSampleError` past the budget.
        A sample ``index`` already reported is logged again but not counted again."""
        where = f"shard={shard} key={key}"
        with self._count.get_lock():
            known = self._seen is not None and index is not None and self._seen[index]
            if not known:
                if self._seen is not None and index is not None:
                    self._seen[index] = 1
                self._count.value += 1
            count = self._count.value
        if known:
            LOGGER.warning("skipping bad sample (seen before, counted once): %s: %s", where, error)
            return
        if count > self.max_bad_samples:
            raise BadSampleError(
                f"bad sample {count} exceeds max_bad_samples={self.max_bad_samples}: {where}: "
                f"{error}. Fix or re-make the data (tools/make_shards.py), or raise "
                f"max_bad_samples to skip more."
            )
        LOGGER.warning(
            "skipping bad sample %d/%d: %s: %s", count, self.max_bad_samples, where, error
        )
