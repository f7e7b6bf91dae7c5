"""The webdataset backend: the shards read by index through ``wids``, for exact epochs.

Why ``wids`` rather than streaming ``webdataset.WebDataset``: streaming splits whole shards across
ranks and workers, so with uneven shards ranks see different sample counts, and the usual fix
(``resampled=True`` + ``with_epoch``) draws shards with replacement: an "epoch" then repeats some
images and misses others, and validation stops being exact. ``wids.ShardListDataset`` gives
random access into the same tar files (mmap + an in-memory header index per open shard), so a
sampler gives every rank exactly ``ceil(N / world)`` samples, every image once per epoch, shuffled
deterministically by epoch, with the shard-locality that keeps reads sequential-ish.
"""

from __future__ import annotations

import io

import numpy as np
import torch
import wids
from PIL import Image
from torch.utils.data import Dataset

from hpff_dist.data.imagenet.errors import BadSampleBudget
from hpff_dist.data.imagenet.shard_checks import check_sizes_at_start
from hpff_dist.data.imagenet.shards import IMAGE_EXTS, find_split
from hpff_dist.data.imagenet.transforms import build_imagenet_transform, rejects_normalisation
from hpff_dist.data.sample_seeds import SeededItems
from hpff_dist.registry import DATASETS

_IMAGE_KEYS = tuple("." + ext for ext in IMAGE_EXTS.split(";"))


def _local_shard(url: str) -> str:
    """Shards are local/shared-filesystem paths: read them in place, no wids download cache."""
    return url


@DATASETS.register_module()
class ImageNetShards(SeededItems, Dataset):
    """Map-style dataset over ``<split>-*.tar`` written by ``tools/make_shards.py``.

    ``__getitem__`` returns ``(image float CHW in [0, 1], label)`` or ``None`` for a skipped bad
    sample. ``shard_lengths`` feeds :class:`ShardAwareDistributedSampler`.
    """

    @rejects_normalisation
    def __init__(
        self,
        root: str,
        split: str = "train",
        train: bool | None = None,
        image_size: int = 224,
        resize_size: int | None = None,
        max_bad_samples: int = 0,
        lru_size: int = 10,
    ) -> None:
        self.split_info = find_split(root, split)
        check_sizes_at_start(self.split_info, max_bad_samples)  # before any epoch, not after
        self.train = split == "train" if train is None else train
        self.transform = build_imagenet_transform(self.train, image_size, resize_size)
        self.shards = wids.ShardListDataset(
            self.split_info.wids_shardlist(),
            localname=_local_shard,
            transformations=[],
            lru_size=lru_size,
        )
        self.budget = BadSampleBudget(max_bad_samples, len(self.shards))
        self.classes = self.split_info.classes
        self._ends = np.cumsum(self.split_info.nsamples)

    @property
    def shard_lengths(self) -> list[int]:
        return list(self.split_info.nsamples)

    def __len__(self) -> int:
        return len(self.shards)

    def load_item(self, index: int):
        shard, key = self._locate(index)
        try:
            sample = self.shards[index]
            key = sample["__key__"]
            image_key = next(k for k in _IMAGE_KEYS if k in sample)
            with Image.open(io.BytesIO(sample[image_key].read())) as image:
                image = image.convert("RGB")
            label = int(sample[".cls"].read())
        except Exception as error:  # noqa: BLE001 - any read/decode failure is a bad sample
            self.budget.report(shard, key, f"{type(error).__name__}: {error}", index)
            return None
        return self.transform(image), torch.tensor(label, dtype=torch.int64)

    def _locate(self, index: int) -> tuple[str, str]:
        """Shard path and a fallback key (``#<index in shard>``) for error reports."""
        shard = int(np.searchsorted(self._ends, index, side="right"))
        start = self._ends[shard - 1] if shard else 0
        return self.split_info.tars[shard], f"#{index - start}"
