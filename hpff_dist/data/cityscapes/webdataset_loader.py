"""The webdataset backend for segmentation: shard pairs through mmseg's own pipeline.

Why the folder pipeline unchanged: the three backends must mean the same thing, and the
surest way for this one is to run *the same* mmseg transforms (``LoadImageFromFile``,
``LoadAnnotations``, ``RandomResize``, ``RandomCrop`` with ``cat_max_ratio``, ...), config
included. A sample's files get ``wds://<shard>#<key>.<ext>`` paths, and
:class:`ShardMemberBackend`, an mmengine file backend registered for the ``wds`` prefix (the
extension point mmengine's ``fileio.get`` offers, the one mmseg's loaders call), reads the
member at its offset in the shard's DALI index: random access into the tar as ``wids`` gives
it, from an index that survives a tar cut inside a header. So the image and the label are
decoded by mmseg's decoders exactly as from the folder, and the pipeline's checks (label
values, image/label size) apply as they do there.

Exact epochs and equal steps per rank: the training sampler is ``ShardAwareDistributedSampler``
(shard-local order, ``ceil(N / world)`` samples per rank); the validation sampler is mmengine's
``DefaultSampler`` without shuffling, whose interleaved split is the one mmengine's result
collection undoes, so distributed validation is exact. A sample that cannot be loaded (a
corrupt PNG, a label whose size differs from its image) is logged with shard and key and
skipped while ``max_bad_samples`` allows, counted once however many passes read it
(``seg_skip_bad_collate`` refills its batch).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from mmengine.fileio.backends import BaseStorageBackend, register_backend

from hpff_dist.data.cityscapes.shards import (
    LABEL_MEMBER,
    MAKE_SEG_SHARDS_HINT,
    shard_member_url,
)
from hpff_dist.data.errors import CorruptDataError
from hpff_dist.data.imagenet.errors import BadSampleBudget, BadSampleError
from hpff_dist.data.imagenet.shard_checks import check_sizes_at_start
from hpff_dist.data.imagenet.shards import IMAGE_EXTS, find_split, sample_components
from hpff_dist.data.shard_writer import index_path_for
from hpff_dist.registry import DATASETS

__all__ = ["CityscapesShards", "ShardMemberBackend"]

URL_PREFIX = "wds://"
_IMAGE_EXTS = IMAGE_EXTS.split(";")
_NOT_DATA_ERRORS = (BadSampleError, ImportError, NameError, SyntaxError, MemoryError)


_MEMBERS: dict[str, dict[str, tuple[int, int]]] = {}  # shard -> member name -> (offset, size)


def member_table(tar: str) -> dict[str, tuple[int, int]]:
    """Where each member of ``tar`` lies, from the shard's DALI index (read once per process).

    Why not wids' reader: it builds its table by walking every tar header, so a shard cut
    inside a header loses all its samples to one ``struct.error``; the index, written with the
    shard, keeps every whole sample readable and names the cut one.
    """
    table = _MEMBERS.get(tar)
    if table is None:
        idx = index_path_for(tar)
        if not os.path.isfile(idx):
            raise FileNotFoundError(
                f"{idx} (the index of {tar}) is missing. {MAKE_SEG_SHARDS_HINT}"
            )
        table = {
            f"{sample['key']}.{ext}": where
            for sample in sample_components(idx)
            for ext, where in sample["members"].items()
        }
        _MEMBERS[tar] = table
    return table


@register_backend("wds", prefixes="wds")
class ShardMemberBackend(BaseStorageBackend):
    """mmengine file backend for ``wds://<shard.tar>#<key>.<ext>``: one member of a sample,
    read at its offset (the other members are not touched); a member cut short by a truncated
    tar is an error naming it, never fewer bytes."""

    def get(self, filepath: str | Path) -> bytes:
        tar, member = str(filepath)[len(URL_PREFIX) :].rsplit("#", 1)
        where = member_table(tar).get(member)
        if where is None:
            raise FileNotFoundError(f"{tar} has no member {member!r} (from {filepath})")
        offset, size = where
        with open(tar, "rb") as f:
            f.seek(offset)
            data = f.read(size)
        if len(data) != size:
            raise CorruptDataError(
                f"{tar}: member {member} truncated ({len(data)} of {size} bytes: the shard is "
                f"cut short). Re-make it: {MAKE_SEG_SHARDS_HINT.split('`')[1]} --resume"
            )
        return data

    def get_text(self, filepath: str | Path, encoding: str = "utf-8") -> str:
        return self.get(filepath).decode(encoding)


def split_member(member: str) -> tuple[str, str]:
    """``city/stem.seg.png`` -> (``city/stem``, ``seg.png``): the extension starts at the
    first dot of the file name (webdataset's rule)."""
    head, slash, name = member.rpartition("/")
    stem, _, ext = name.partition(".")
    return f"{head}{slash}{stem}", ext


def list_shard_pairs(tars: list[str], indexes: list[str]) -> list[dict[str, Any]]:
    """mmseg data infos of every sample, read from the DALI indexes (the tars stay closed)."""
    data_list = []
    for tar, idx in zip(tars, indexes):
        for sample in sample_components(idx):
            members = sample["members"]
            image_ext = next((e for e in _IMAGE_EXTS if e in members), None)
            if image_ext is None or LABEL_MEMBER not in members:
                raise ValueError(
                    f"{tar}: sample {sample['key']} lacks its image or {LABEL_MEMBER}; "
                    "is this a segmentation shard set? " + MAKE_SEG_SHARDS_HINT
                )
            data_list.append(
                dict(
                    img_path=shard_member_url(tar, sample["key"], image_ext),
                    seg_map_path=shard_member_url(tar, sample["key"], LABEL_MEMBER),
                    label_map=None,
                    reduce_zero_label=False,
                    seg_fields=[],
                )
            )
    return data_list


@functools.cache
def _dataset_class() -> type:
    """mmseg's ``CityscapesDataset`` listing shard members, + :class:`SeededItems`; defined on
    first use (mmseg needs the ``mmcv.ops`` stand-in)."""
    from hpff_dist import compat
    from hpff_dist.data.sample_seeds import SeededItems

    compat.provide_mmcv_ops_without_compiled_extension()
    from mmseg.datasets import CityscapesDataset

    class CityscapesShardsDataset(SeededItems, CityscapesDataset):
        """Cityscapes samples read from shards; a sample that fails to load is reported and
        returned as None (within the budget)."""

        def __init__(self, split_info: Any, max_bad_samples: int, **kwargs: Any) -> None:
            self.split_info = split_info
            self.budget = BadSampleBudget(max_bad_samples, sum(split_info.nsamples))
            super().__init__(**kwargs)

        @property
        def shard_lengths(self) -> list[int]:
            return list(self.split_info.nsamples)

        def load_data_list(self) -> list[dict]:
            return list_shard_pairs(self.split_info.tars, self.split_info.indexes)

        def load_item(self, index: int) -> Any:
            try:
                return CityscapesDataset.__getitem__(self, index)
            except _NOT_DATA_ERRORS:
                raise  # the code or the budget, not the sample
            except Exception as error:  # noqa: BLE001 - any other load failure: one bad sample
                shard, _, member = self.get_data_info(index)["img_path"].rpartition("#")
                key = split_member(member)[0]
                self.budget.report(shard[len(URL_PREFIX) :], key, _describe(error), index)
                return None

    CityscapesShardsDataset.__module__ = __name__  # pickled by name: see __getattr__
    CityscapesShardsDataset.__qualname__ = "CityscapesShardsDataset"
    return CityscapesShardsDataset


def _describe(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}"
    if isinstance(error, AttributeError) and "NoneType" in text:
        return f"the image or label does not decode ({text})"
    return text


def __getattr__(name: str) -> Any:
    """``CityscapesShardsDataset`` for pickle (spawned DataLoader workers): defined lazily."""
    if name == "CityscapesShardsDataset":
        return _dataset_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@DATASETS.register_module()
def CityscapesShards(
    root: str,
    split: str = "train",
    pipeline: list | tuple = (),
    max_bad_samples: int = 0,
    check_labels: bool = True,
    **kwargs: Any,
) -> Any:
    """mmseg's ``CityscapesDataset`` over the shards of ``tools/make_shards.py --layout
    cityscapes`` in ``root`` (split ``split``), with the folder backend's pipeline.

    ``max_bad_samples``: samples that fail to load, skipped (logged with shard and key) before
    the run stops; truncated shards are found at construction and counted against it.
    ``check_labels``: check every loaded label map's values and size, as the folder backend does.
    """
    from mmengine.registry import DefaultScope

    from hpff_dist.data.cityscapes.folder import check_pipeline_labels
    from hpff_dist.registry import SCOPE

    split_info = find_split(root, split, MAKE_SEG_SHARDS_HINT)
    check_sizes_at_start(split_info, max_bad_samples)
    with DefaultScope.overwrite_default_scope(SCOPE):
        dataset = _dataset_class()(
            split_info, max_bad_samples, data_root=str(root), pipeline=list(pipeline), **kwargs
        )
    classes = [split_info.classes[i] for i in range(len(split_info.classes))]
    if tuple(classes) != tuple(dataset.metainfo["classes"]):
        raise ValueError(
            f"{root}: the shards' classes ({classes[:3]}...) are not Cityscapes' "
            f"({list(dataset.metainfo['classes'])[:3]}...); pass metainfo=dict(classes=...)"
        )
    if check_labels:
        check_pipeline_labels(dataset)
    return dataset
