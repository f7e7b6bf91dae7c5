"""Cityscapes from its folder layout: mmseg's ``CityscapesDataset``, checked before it is used.

Why a wrapper: mmseg's dataset lists ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` and
expects a ``*_gtFine_labelTrainIds.png`` beside each annotation, which the official zips do not
contain. Without them mmseg builds an empty dataset or fails at the first sample with
``FileNotFoundError`` deep in a DataLoader worker. ``CityscapesFolder`` (registered in our
``DATASETS``) checks the layout first and says which command fixes it, then builds mmseg's
dataset. Its pipeline names mmseg's transforms with their scope (``mmseg.RandomCrop``), since
under our default scope a plain name finds ours first.

The dataset it returns is mmseg's ``CityscapesDataset`` with :class:`SeededItems` added (so
``SeededSampler`` fixes each sample's augmentation by (seed, epoch, index) as for our other
datasets), and every ``LoadAnnotations`` of its pipeline checks the label values it loads
(0-18 and 255; anything else is a labelIds file or a broken conversion, which would train
silently on wrong classes or crash CUDA's cross entropy far from the cause).

mmseg imports ``mmcv.ops``, which mmcv-lite lacks: the stand-in of
:func:`hpff_dist.compat.provide_mmcv_ops_without_compiled_extension` is applied before mmseg is
imported. mmseg is imported on first use only, so ``import hpff_dist.data`` stays light.
"""

from __future__ import annotations

import functools
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hpff_dist.data.errors import CorruptDataError
from hpff_dist.registry import DATASETS

__all__ = [
    "CityscapesLayoutError",
    "CityscapesFolder",
    "check_label_values",
    "check_pipeline_labels",
    "convert_command",
]

IMG_SUFFIX = "_leftImg8bit.png"
TRAIN_IDS_SUFFIX = "_gtFine_labelTrainIds.png"
SOURCE_SUFFIXES = ("_gtFine_labelIds.png", "_gtFine_polygons.json")
IGNORE_INDEX = 255
CITYSCAPES_URL = "https://www.cityscapes-dataset.com/downloads/"


class CityscapesLayoutError(FileNotFoundError):
    """A Cityscapes folder or file the dataset needs is not there; the message says which
    command makes it."""


def convert_command(root: Path | str) -> str:
    """The command that makes the trainIds files under ``root``."""
    return f"python tools/convert_cityscapes.py {shlex.quote(str(root))}"


def _unzip_command(zip_name: str, root: Path) -> str:
    return f"unzip {zip_name} -d {shlex.quote(str(root))}"


def check_folders(root: Path, data_prefix: Mapping[str, str]) -> None:
    """Refuse a missing root, image folder or annotation folder, naming the command that
    makes it: mmseg would list nothing and train on an empty dataset."""
    images = root / data_prefix.get("img_path", "")
    labels = root / data_prefix["seg_map_path"] if data_prefix.get("seg_map_path") else None
    get_zips = f"download them from {CITYSCAPES_URL} (account needed)"
    if not root.is_dir():
        raise CityscapesLayoutError(
            f"Cityscapes root {root} does not exist. Set data_root (or the env CITYSCAPES_ROOT) "
            f"to the folder holding leftImg8bit/ and gtFine/, or make it: "
            f"{_unzip_command('leftImg8bit_trainvaltest.zip', root)} && "
            f"{_unzip_command('gtFine_trainvaltest.zip', root)} && {convert_command(root)} "
            f"({get_zips})"
        )
    if not images.is_dir():
        raise CityscapesLayoutError(
            f"Cityscapes images not found: {images} is missing. Run "
            f"{_unzip_command('leftImg8bit_trainvaltest.zip', root)} ({get_zips})"
        )
    if labels is not None and not labels.is_dir():
        raise CityscapesLayoutError(
            f"Cityscapes annotations not found: {labels} is missing. Run "
            f"{_unzip_command('gtFine_trainvaltest.zip', root)} && {convert_command(root)} "
            f"({get_zips})"
        )


def _has_source(seg_map: Path, seg_map_suffix: str) -> bool:
    """Whether the annotation a trainIds file is made from is there."""
    stem = seg_map.name[: -len(seg_map_suffix)]
    return any((seg_map.parent / (stem + s)).is_file() for s in SOURCE_SUFFIXES)


def check_label_files(root: Path, seg_maps: Sequence[str], seg_map_suffix: str) -> None:
    """Refuse label files that are missing, naming the conversion command when the gtFine
    annotation they come from is there (the usual case: the conversion was not run or was
    interrupted) and the gtFine zip otherwise."""
    missing = [Path(p) for p in seg_maps if not Path(p).is_file()]
    if not missing:
        return
    first = missing[0]
    what = f"{len(missing)} of {len(seg_maps)} label files are missing (the first: {first})"
    if seg_map_suffix == TRAIN_IDS_SUFFIX and _has_source(first, seg_map_suffix):
        raise CityscapesLayoutError(
            f"Cityscapes trainIds labels not made yet: {what}. Run {convert_command(root)} "
            "(add --resume to keep the ones already made)"
        )
    raise CityscapesLayoutError(
        f"Cityscapes annotations incomplete: {what}, and no gtFine annotation to make them "
        f"from. Run {_unzip_command('gtFine_trainvaltest.zip', root)} && {convert_command(root)}"
    )


def _root_of(seg_map_path: str) -> str:
    """The Cityscapes root of ``ROOT/gtFine/<split>/<city>/file`` (``ROOT`` if not that)."""
    parts = Path(seg_map_path).parts
    return str(Path(*parts[:-4])) if len(parts) > 4 and parts[-4] == "gtFine" else "ROOT"


def check_label_values(seg: np.ndarray, path: str, num_classes: int) -> None:
    """Refuse label values other than 0..num_classes-1 and 255, naming the file. A bincount
    over 8-bit labels: about 3 ms for a 2048x1024 map."""
    if seg.dtype == np.uint8:
        counts = np.bincount(seg.ravel(), minlength=256)
        bad = [v for v in np.flatnonzero(counts) if num_classes <= v != IGNORE_INDEX]
    else:
        bad = [v for v in np.unique(seg) if not (0 <= v < num_classes or v == IGNORE_INDEX)]
    if bad:
        shown = ", ".join(str(int(v)) for v in bad[:10]) + (" ..." if len(bad) > 10 else "")
        raise CorruptDataError(
            f"{path}: label values {shown} are outside 0-{num_classes - 1} and "
            f"{IGNORE_INDEX} (ignored). A trainIds file holds Cityscapes trainIds, not labelIds; "
            f"remake it with {convert_command(_root_of(path))}"
        )


def check_same_size(label_shape: tuple, image_shape: tuple | None, results: dict) -> None:
    """Refuse a label map whose size differs from its image's: mmseg would resize and crop the
    two by different amounts and train on a misaligned pair without a word."""
    if image_shape is not None and tuple(label_shape) != tuple(image_shape[:2]):
        raise CorruptDataError(
            f"{results['seg_map_path']}: label map {label_shape[1]}x{label_shape[0]} but "
            f"image {results.get('img_path')} is {image_shape[1]}x{image_shape[0]} (w x h): "
            "the pair does not belong together; re-make the label file "
            f"({convert_command(_root_of(results['seg_map_path']))} for Cityscapes)"
        )


class CheckedLabels:
    """A ``LoadAnnotations`` whose loaded ``gt_seg_map`` is checked by
    :func:`check_label_values` (wrapped, not subclassed: the pipeline keeps mmseg's object)."""

    def __init__(self, load: Any, num_classes: int) -> None:
        self.load = load
        self.num_classes = num_classes

    def __call__(self, results: dict) -> dict:
        results = self.load(results)
        if results is not None and "gt_seg_map" in results:
            seg = results["gt_seg_map"]
            check_label_values(seg, results["seg_map_path"], self.num_classes)
            check_same_size(seg.shape[:2], results.get("ori_shape"), results)
        return results

    def __repr__(self) -> str:
        return f"CheckedLabels({self.load!r})"


def _nested_lists(transform: Any) -> list[list]:
    """The transform lists inside a transform: ``Compose.transforms``, the list of
    ``TestTimeAug.subroutines`` (whose items are ``Compose``), ``RandomChoice.transforms``."""
    lists = []
    for attr in ("transforms", "subroutines"):
        inner = getattr(transform, attr, None)
        inner = getattr(inner, "transforms", inner)  # a Compose: its list
        if isinstance(inner, list):
            lists.append(inner)
    return lists


def _check_label_loading(transforms: list, load_type: type, num_classes: int) -> None:
    """Wrap every ``load_type`` in ``transforms``, and in the lists nested in them, in
    :class:`CheckedLabels` (in place)."""
    for i, transform in enumerate(transforms):
        if isinstance(transform, load_type):
            transforms[i] = CheckedLabels(transform, num_classes)
        else:
            for inner in _nested_lists(transform):
                _check_label_loading(inner, load_type, num_classes)


@functools.cache
def _dataset_class() -> type:
    """mmseg's ``CityscapesDataset`` + :class:`SeededItems`, defined on first use (importing
    mmseg costs seconds and needs the ``mmcv.ops`` stand-in)."""
    from hpff_dist import compat
    from hpff_dist.data.sample_seeds import SeededItems

    compat.provide_mmcv_ops_without_compiled_extension()
    from mmseg.datasets import CityscapesDataset

    class CityscapesFolderDataset(SeededItems, CityscapesDataset):
        """mmseg's Cityscapes dataset whose items can be loaded under a per-sample seed."""

        def load_item(self, index: int) -> Any:
            return CityscapesDataset.__getitem__(self, index)

    CityscapesFolderDataset.__module__ = __name__  # pickled by name: see __getattr__
    CityscapesFolderDataset.__qualname__ = "CityscapesFolderDataset"
    return CityscapesFolderDataset


def __getattr__(name: str) -> Any:
    """``CityscapesFolderDataset`` for pickle (spawned DataLoader workers): defined lazily."""
    if name == "CityscapesFolderDataset":
        return _dataset_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _build_mmseg_dataset(**kwargs: Any) -> Any:
    """The dataset, its pipeline built under our scope whoever calls: a transform name then
    means what our config check (``hpff_dist.engine.signatures``) resolved it to, so
    ``mmseg.RandomCrop`` is mmseg's and a plain ``RandomCrop`` ours (torchvision's). (Under
    mmseg's scope a scoped ``mmseg.LoadImageFromFile`` would not be found: mmengine looks a
    name of the registry's own scope up in that registry only, and mmcv's transforms live in
    its parent.)"""
    from mmengine.registry import DefaultScope

    from hpff_dist.registry import SCOPE

    cls = _dataset_class()
    with DefaultScope.overwrite_default_scope(SCOPE):
        return cls(**kwargs)


@DATASETS.register_module()
def CityscapesFolder(
    data_root: str,
    data_prefix: Mapping[str, str] | None = None,
    pipeline: Sequence[Any] = (),
    check_labels: bool = True,
    **kwargs: Any,
) -> Any:
    """mmseg's ``CityscapesDataset`` on ``data_root``, after checking that its folders and
    label files are there (each error names the command to run). ``check_labels``: check the
    values of every label map loaded (cheap). Other arguments go to mmseg's dataset."""
    prefix = dict(data_prefix or {"img_path": "", "seg_map_path": ""})
    root = Path(data_root)
    check_folders(root, prefix)
    seg_map_suffix = kwargs.get("seg_map_suffix", TRAIN_IDS_SUFFIX)
    dataset = _build_mmseg_dataset(
        data_root=str(root), data_prefix=prefix, pipeline=list(pipeline), **kwargs
    )
    if not kwargs.get("lazy_init", False):
        check_dataset_files(dataset, root, prefix, seg_map_suffix)
    if check_labels:
        check_pipeline_labels(dataset)
    return dataset


def check_pipeline_labels(dataset: Any) -> None:
    """Make every ``LoadAnnotations`` of ``dataset``'s pipeline check the values and size of
    the label maps it loads (:class:`CheckedLabels`, in place)."""
    from mmseg.datasets.transforms import LoadAnnotations

    num_classes = len(dataset.metainfo["classes"])
    _check_label_loading(dataset.pipeline.transforms, LoadAnnotations, num_classes)


def check_dataset_files(dataset: Any, root: Path, prefix: Mapping[str, str], suffix: str) -> None:
    """No images: the image folder is empty or holds other files. Then every listed sample's
    label file must exist (mmseg's own listing, so ``ann_file`` and suffixes count)."""
    if len(dataset) == 0:
        images = root / prefix.get("img_path", "")
        raise CityscapesLayoutError(
            f"no *{dataset.img_suffix} images under {images}/<city>/. Run "
            f"{_unzip_command('leftImg8bit_trainvaltest.zip', root)} (from {CITYSCAPES_URL})"
        )
    if prefix.get("seg_map_path"):
        seg_maps = [dataset.get_data_info(i)["seg_map_path"] for i in range(len(dataset))]
        check_label_files(root, seg_maps, suffix)
