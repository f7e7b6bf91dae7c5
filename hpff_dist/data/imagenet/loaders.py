"""One entry point for the three ImageNet backends: ``folder``, ``webdataset`` (wids) and ``dali``.

All return an iterable of ``(images float NCHW, labels int64)`` (images normalised with the
ImageNet mean/std, or in [0, 1] with ``normalize=False``) with ``len()`` =
batches per rank per epoch, the same on every rank, and ``set_epoch(epoch)`` for shuffling.
"""

from __future__ import annotations

from torch.utils.data import DataLoader, DistributedSampler

from hpff_dist.data.imagenet.collate import SkipBadCollate
from hpff_dist.data.imagenet.ranks import check_batch_size, resolve_rank, samples_per_rank
from hpff_dist.data.imagenet.samplers import ShardAwareDistributedSampler

BACKENDS = ("folder", "webdataset", "dali")


class EpochDataLoader(DataLoader):
    """A DataLoader that forwards ``set_epoch`` to its sampler (what mmengine's loops call too)."""

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)


def build_imagenet_dataloader(
    backend: str,
    root: str,
    split: str = "train",
    batch_size: int = 32,
    num_workers: int = 4,
    train: bool | None = None,
    image_size: int = 224,
    resize_size: int | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    seed: int = 0,
    drop_last: bool | None = None,
    max_bad_samples: int = 0,
    device: str = "auto",
    pin_memory: bool | None = None,
    normalize: bool = True,
):
    """Build the loader for ``backend``; ``root`` is the ImageNet folder (``folder``) or the shard
    directory (``webdataset``, ``dali``). ``train`` defaults to ``split == 'train'`` and turns on
    augmentation and shuffling; ``drop_last`` defaults to ``train``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    rank, world_size = resolve_rank(rank, world_size)
    train = split == "train" if train is None else train
    drop_last = train if drop_last is None else drop_last
    common = dict(
        split=split,
        train=train,
        image_size=image_size,
        resize_size=resize_size,
        max_bad_samples=max_bad_samples,
        normalize=normalize,
    )
    if backend == "dali":
        from hpff_dist.data.imagenet.dali_loader import DaliImageNetLoader

        return DaliImageNetLoader(
            root,
            batch_size=batch_size,
            num_threads=max(num_workers, 1),
            device=device,
            rank=rank,
            world_size=world_size,
            seed=seed,
            drop_last=drop_last,
            **common,
        )
    if backend == "folder":
        from hpff_dist.data.imagenet.folder import ImageNetFolder

        dataset = ImageNetFolder(root, **common)
        sampler = DistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=train, seed=seed
        )
    else:
        from hpff_dist.data.imagenet.webdataset_loader import ImageNetShards

        dataset = ImageNetShards(root, **common)
        sampler = ShardAwareDistributedSampler(
            dataset, shuffle=train, seed=seed, rank=rank, world_size=world_size
        )
    check_batch_size(batch_size, samples_per_rank(len(dataset), world_size), drop_last)
    return EpochDataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=SkipBadCollate(),
        drop_last=drop_last,
        pin_memory=_cuda_available() if pin_memory is None else pin_memory,
        persistent_workers=num_workers > 0,
    )


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
