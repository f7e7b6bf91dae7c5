"""Batch collation that drops the samples a dataset marked bad (returned as ``None``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import default_collate

from hpff_dist.data.imagenet.errors import BadSampleError
from hpff_dist.registry import FUNCTIONS


class SkipBadCollate:
    """``collate`` (default: ``default_collate``, labels as int64) over the good samples; a batch
    keeps its place even if it shrinks.

    Keeping every batch (possibly smaller) keeps the number of steps per rank fixed, so a skipped
    sample never makes one rank wait for another.
    """

    def __init__(self, collate: Callable[[list], Any] | None = None, fill: bool = False) -> None:
        self.collate = collate
        self.fill = fill

    def __call__(self, batch: Sequence) -> Any:
        good = [sample for sample in batch if sample is not None]
        if not good:
            # An empty batch cannot go through BatchNorm or a loss; a whole batch of bad samples
            # means a damaged shard rather than a stray file, so stop and say so.
            raise BadSampleError(
                f"all {len(batch)} samples of a batch were bad (each was reported above with its "
                "shard and key): the shard is damaged; re-create it with tools/make_shards.py"
            )
        if self.fill:  # repeat good samples in the bad ones' places: the batch keeps its size
            good += [good[i % len(good)] for i in range(len(batch) - len(good))]
        if self.collate is not None:
            return self.collate(good)
        images, labels = default_collate(good)
        return images, labels.long()


@FUNCTIONS.register_module(name="imagenet_skip_bad_collate")
def skip_bad_collate(batch: Sequence) -> tuple[torch.Tensor, torch.Tensor]:
    """:class:`SkipBadCollate` as a function, for mmengine dataloader configs:
    ``collate_fn=dict(type='hpff_dist.imagenet_skip_bad_collate')``. The scope prefix is
    needed because the Runner looks collate functions up in mmengine's root registry."""
    return SkipBadCollate()(batch)


@FUNCTIONS.register_module(name="seg_skip_bad_collate")
def seg_skip_bad_collate(batch: Sequence) -> dict:
    """mmengine's ``pseudo_collate`` (what mmseg's loaders use) over the samples a shard
    dataset did not mark bad, each bad one's place taken by a repeat of a good one:
    ``collate_fn=dict(type='hpff_dist.seg_skip_bad_collate')``. The batch keeps its size
    because DeepLab's ASPP pooling branch cannot normalise a batch of one image."""
    from mmengine.dataset import pseudo_collate

    return SkipBadCollate(pseudo_collate, fill=True)(batch)
