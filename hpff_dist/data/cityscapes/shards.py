"""Cityscapes (or any mmseg folder dataset) as webdataset shards of (image, label map) pairs.

Written by the split driver of :mod:`hpff_dist.data.shard_writer` (plan, atomic writes,
``--resume``, verification, manifest, DALI indexes) with :class:`SegPairLayout`. A sample,
key ``<city>/<stem>`` (``aachen/aachen_000000_000019``), is::

    <key>.png       the image, bytes as stored (``.jpg`` for JPEG datasets): never re-encoded
    <key>.seg.png   the label map (Cityscapes: the ``*_labelTrainIds.png``), bytes as stored
    <key>.json      {"key", "img_path", "seg_map_path" (relative to the data root), "height",
                    "width"}

The pairs are listed by mmseg's own dataset class (``CityscapesDataset`` by default, after the
folder checks of :func:`~hpff_dist.data.cityscapes.folder.CityscapesFolder`, whose errors name
the command that fixes a missing folder or trainIds file), so a shard set holds exactly the
samples the folder backend trains on. Each pair is checked before it is written: the image
and the label decode, the label is 8-bit single-channel with values in the classes or 255, and
both have the same size; a bad pair is reported with its paths and skipped within ``max_bad``
or stops the run.
"""

from __future__ import annotations

import io
import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpff_dist.data.errors import CorruptDataError
from hpff_dist.data.imagenet.shard_checks import read_members
from hpff_dist.data.imagenet.shards import key_of
from hpff_dist.data.shard_writer import ShardSize, tar_bytes, write_split_shards

LABEL_MEMBER = "seg.png"
META_MEMBER = "json"
MAKE_SEG_SHARDS_HINT = (
    "Cityscapes shards are made with `python tools/make_shards.py CITYSCAPES_ROOT OUT "
    "--layout cityscapes --split train` (and --split val) from the official folders with the "
    "trainIds files (tools/convert_cityscapes.py); see docs/data.md."
)


@dataclass(frozen=True)
class SegSourceSample:
    """One (image, label map) pair of the source tree, and the key it gets in a shard."""

    path: str  # the image
    seg_path: str
    key: str
    ext: str
    img_rel: str
    seg_rel: str
    size: int  # image + label bytes

    @property
    def tar_bytes(self) -> int:
        seg_size = os.path.getsize(self.seg_path)
        return tar_bytes([self.size - seg_size, seg_size, 256])

    @property
    def plan_line(self) -> str:
        return f"{self.key}\t{self.ext}\t{self.img_rel}\t{self.seg_rel}\t{self.size}"


def _image_ext(path: str) -> str:
    ext = Path(path).suffix.lower().lstrip(".")
    return "jpg" if ext in ("jpg", "jpeg") else ext


def pair_key(img_path: str, img_root: str, img_suffix: str) -> str:
    """``<city>/<stem>``: the image's path under the image folder without the dataset's image
    suffix; dots become ``_`` (readers split the extension at the first dot)."""
    rel = os.path.relpath(img_path, img_root)
    if rel.endswith(img_suffix):
        rel = rel[: -len(img_suffix)]
    else:
        rel = str(Path(rel).with_suffix(""))
    return rel.replace(os.sep, "/").replace(".", "_")


def list_seg_pairs(
    root: str | Path,
    split: str,
    dataset: str = "CityscapesDataset",
    img_dir: str | None = None,
    ann_dir: str | None = None,
) -> tuple[list[str], list[SegSourceSample]]:
    """Classes and (image, label) pairs of one split, as mmseg's ``dataset`` class lists them.

    Cityscapes' folders default to ``leftImg8bit/<split>`` and ``gtFine/<split>`` and are
    checked first (a missing folder or trainIds file names its command); another mmseg
    dataset needs ``img_dir`` and ``ann_dir``.
    """
    root = Path(root)
    if dataset == "CityscapesDataset":
        from hpff_dist.data.cityscapes.folder import CityscapesFolder

        prefix = dict(
            img_path=img_dir or f"leftImg8bit/{split}", seg_map_path=ann_dir or f"gtFine/{split}"
        )
        listed = CityscapesFolder(str(root), data_prefix=prefix, check_labels=False)
    else:
        if not (img_dir and ann_dir):
            raise ValueError(f"{dataset}: give the image and annotation folders (img_dir, ann_dir)")
        from mmengine.registry import init_default_scope

        from hpff_dist import compat

        compat.provide_mmcv_ops_without_compiled_extension()
        from mmseg.registry import DATASETS

        init_default_scope("mmseg")
        prefix = dict(img_path=img_dir, seg_map_path=ann_dir)
        listed = DATASETS.build(dict(type=dataset, data_root=str(root), data_prefix=prefix))
    img_root = str(root / prefix["img_path"])
    samples = []
    for i in range(len(listed)):
        info = listed.get_data_info(i)
        img, seg = info["img_path"], info["seg_map_path"]
        samples.append(
            SegSourceSample(
                path=img,
                seg_path=seg,
                key=pair_key(img, img_root, listed.img_suffix),
                ext=_image_ext(img),
                img_rel=os.path.relpath(img, root),
                seg_rel=os.path.relpath(seg, root),
                size=os.path.getsize(img) + os.path.getsize(seg),
            )
        )
    keys = Counter(s.key for s in samples)
    duplicated = [k for k, n in keys.items() if n > 1]
    if duplicated:
        raise ValueError(f"two images map to the same shard key, e.g. {duplicated[:3]}")
    return list(listed.metainfo["classes"]), samples


def pair_problem(image: bytes, label: bytes, num_classes: int, where: str) -> str | None:
    """Why an (image, label map) pair must not be trained on, or None.

    The image and the label must decode (fully: a truncated PNG fails only at its end), the
    label be one 8-bit channel with values in 0..num_classes-1 or 255, and both the same size.
    """
    from PIL import Image

    from hpff_dist.data.cityscapes.folder import check_label_values
    from hpff_dist.data.imagenet.shards import decode_error

    error = decode_error(image)
    if error:
        return f"image: {error}"
    try:
        with Image.open(io.BytesIO(label)) as seg:
            seg.load()
            mode, array = seg.mode, np.asarray(seg)
    except Exception as failure:  # noqa: BLE001 - any decoder failure marks the pair bad
        return f"label map: {type(failure).__name__}: {failure}"
    if mode not in ("L", "P"):
        return f"label map is {mode!r}, not one 8-bit channel of class ids"
    with Image.open(io.BytesIO(image)) as im:
        width, height = im.size
    if array.shape != (height, width):
        return (
            f"label map is {array.shape[1]}x{array.shape[0]}, its image {width}x{height}: "
            "the pair would be cropped out of alignment"
        )
    try:
        check_label_values(array, where, num_classes)
    except CorruptDataError as failure:
        return str(failure)
    return None


def _image_size(data: bytes) -> tuple[int, int]:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return im.size


class SegPairLayout:
    """An (image, label map) pair in a shard: both as stored, plus their metadata."""

    members = (META_MEMBER, LABEL_MEMBER)

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes

    def read(self, sample: SegSourceSample, check: bool) -> tuple[dict[str, bytes], str | None]:
        with open(sample.path, "rb") as f:
            image = f.read()
        with open(sample.seg_path, "rb") as f:
            label = f.read()
        if check:
            error = pair_problem(image, label, self.num_classes, sample.seg_path)
            if error:
                return {}, error
        try:
            width, height = _image_size(image)
        except Exception as failure:  # noqa: BLE001 - unchecked and unreadable: still bad
            return {}, f"image: {type(failure).__name__}: {failure}"
        meta = {
            "key": sample.key,
            "img_path": sample.img_rel,
            "seg_map_path": sample.seg_rel,
            "height": height,
            "width": width,
        }
        members = {sample.ext: image, LABEL_MEMBER: label, META_MEMBER: json.dumps(meta).encode()}
        return members, None

    def read_back(self, tar_path: str) -> list[str]:
        members, _ = read_members(tar_path)
        return list(dict.fromkeys(key_of(info.name) for info in members))

    def expected(self, sample: SegSourceSample) -> str:
        return sample.key

    def summary(self, written: Sequence[SegSourceSample], classes: Sequence[str]) -> dict:
        cities = Counter(s.key.split("/", 1)[0] for s in written if "/" in s.key)
        return {"layout": "segmentation", "classes": list(classes), "per_city": dict(cities)}


def make_seg_split_shards(
    root: str | Path,
    out: str | Path,
    split: str,
    shard_size: ShardSize,
    *,
    dataset: str = "CityscapesDataset",
    img_dir: str | None = None,
    ann_dir: str | None = None,
    resume: bool = False,
    shuffle_seed: int | None = None,
    workers: int = 1,
    progress: bool = True,
    max_bad: int = 0,
    check: bool = True,
) -> dict:
    """Shard one split of a segmentation folder dataset into ``out``; return its manifest."""
    classes, samples = list_seg_pairs(root, split, dataset, img_dir, ann_dir)
    return write_split_shards(
        samples,
        classes,
        out,
        split,
        shard_size,
        SegPairLayout(len(classes)),
        source=str(root),
        resume=resume,
        shuffle_seed=shuffle_seed,
        workers=workers,
        progress=progress,
        max_bad=max_bad,
        check=check,
    )


def shard_member_url(tar: str, key: str, ext: str) -> str:
    """The ``wds://`` path of one member, read by the file backend of
    :mod:`hpff_dist.data.cityscapes.webdataset_loader`."""
    return f"wds://{tar}#{key}.{ext}"
