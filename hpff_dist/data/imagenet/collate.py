"""Batch collation that drops the samples a dataset marked bad (returned as ``None``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import default_collate

from hpff_dist.registry import FUNCTIONS


class SkipBadCollate:
    """``default_collate`` over the good samples; a batch keeps its place even if it shrinks.

    Keeping every batch (possibly smaller) keeps the number of steps per rank fixed, so a skipped
    sample never makes one rank wait for another.
    """

    def __init__(self, image_size: int) -> None:
        self.image_size = image_size

    def __call__(self, batch: Sequence) -> tuple[torch.Tensor, torch.Tensor]:
        good = [sample for sample in batch if sample is not None]
        if not good:
            size = self.image_size
            return torch.empty(0, 3, size, size), torch.empty(0, dtype=torch.int64)
        images, labels = default_collate(good)
        return images, labels.long()


@FUNCTIONS.register_module(name="imagenet_skip_bad_collate")
def skip_bad_collate(batch: Sequence, image_size: int = 224) -> tuple[torch.Tensor, torch.Tensor]:
    """:class:`SkipBadCollate` as a function, for mmengine dataloader configs:
    ``collate_fn=dict(type='hpff_dist.imagenet_skip_bad_collate', image_size=224)``. The scope
    prefix is needed because the Runner looks collate functions up in mmengine's root registry;
    mmengine binds the keyword arguments with ``functools.partial``."""
    return SkipBadCollate(image_size)(batch)
