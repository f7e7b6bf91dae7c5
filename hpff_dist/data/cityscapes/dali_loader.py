"""NVIDIA DALI loader over Cityscapes (image, label) shards, with mmseg's semantics.

The shards are those of :func:`hpff_dist.data.cityscapes.shards.make_seg_split_shards`
(``<key>.png``, ``<key>.seg.png`` trainIds, ``<key>.json`` paths and size).
``fn.readers.webdataset`` reads them sharded by global rank; the image is decoded ``mixed``
(GPU) when there is a GPU and on the CPU otherwise, with the same graph; the label is always
decoded, resized, cropped and flipped on the CPU as 8-bit values (nearest neighbour only, so
class ids stay exact). Batches are what mmseg's ``PackSegInputs`` + ``pseudo_collate`` give the
``folder`` backend: ``{"inputs": [uint8 CHW BGR], "data_samples": [SegDataSample]}`` with
``gt_sem_seg`` (1, H, W) int64 and the same metainfo keys (``img_path``, ``seg_map_path``,
``ori_shape``, ``img_shape``, ``scale_factor``, ``reduce_zero_label``; train also ``flip``,
``flip_direction``). ``img_path``/``seg_map_path`` are the shard's relative paths, joined to
``img_root`` when given (the original tree, for pictures that read the image back).

Train transforms, against mmseg's (``configs/_base_/datasets/cityscapes_folder.py``):

* RandomResize: ratio uniform in ``ratio_range``, scale ``int(s * ratio)``, then mmcv's
  keep-ratio rule ``int(x * factor + 0.5)``, computed in float64 in the graph (exact sizes).
  Image bilinear without antialias (cv2 ``INTER_LINEAR``; DALI's fixed point differs by at
  most 1 level), label nearest neighbour at pixel centres (cv2 ``INTER_NEAREST_EXACT``), from
  one draw. mmcv's ``INTER_NEAREST`` samples ``floor(x * scale)``, up to one source pixel
  up-left of the bilinear image's centres: our pairs are aligned at least as well.
* RandomCrop with ``cat_max_ratio``: **exact**. 11 candidate windows are drawn in the graph;
  a ``python_function`` on the resized CPU label takes the first of the first 10 whose
  histogram over non-ignored classes has more than one class and max/sum below the ratio,
  else the 11th, as mmseg does (a bincount per candidate tried: 1.7 ms per 512x1024 window
  on one core here, 15 ms when all 10 fail; usually the first passes). A resized image smaller than the crop is
  cropped whole (mmseg's slicing); the data preprocessor pads it (image 0, label 255).
* RandomFlip: one coin for image and label; ``flip``/``flip_direction`` as mmcv sets them.
* PhotoMetricDistortion: brightness (+U(-32, 32), p 0.5) and contrast (x U(0.5, 1.5), p 0.5,
  before or after the colour part by a coin) are mmseg's arithmetic exactly (float32, clip,
  truncation to uint8 after each step). Saturation (U(0.5, 1.5), p 0.5) and hue (integer
  delta in [-18, 18) of cv2's 180-step hue, i.e. twice that in degrees, p 0.5) use ``fn.hsv``
  in one step: DALI scales chroma and rotates hue in YIQ space, where mmseg round-trips
  through cv2's uint8 HSV per step, so those pixels differ (same distributions of factors,
  a different colour model; an augmentation, not an evaluation path).

Val/test: the full image resized by mmcv's keep-ratio rule to ``scale`` (identity for
2048x1024 Cityscapes images: bit-identical to the folder backend), the label not resized
(mmseg's test pipeline loads it after the resize).

Equal steps per rank, as :class:`~hpff_dist.data.imagenet.dali_loader.DaliImageNetLoader`:
``pad_last_batch`` + ``LastBatchPolicy.FILL``, the last batch trimmed to ``ceil(N / world)``
samples per rank. The augmentation seed differs per rank (``seed``, ``rank``), the reader's
shuffle seed is ``seed`` on every rank.

Bad data: a truncated shard is found up front from its index and its readable samples kept
(:func:`~hpff_dist.data.imagenet.dali_loader.drop_truncated_samples`, under
``max_bad_samples``). A sample that fails to decode mid-run stops the run with
:class:`BadSampleError` naming shard and key (DALI cannot skip it). A label whose size differs
from its image's, or that is not single-channel, is found in the graph (the image's header
shape against the decoded label's) and stops the run with :class:`BadSampleError` naming
shard and key: a pair is never silently misaligned (both are resized to the image's target
size first, so nothing crashes before the check). Label values outside 0..C-1 and 255 raise
:class:`~hpff_dist.data.errors.CorruptDataError`, as in the folder backend.
"""

from __future__ import annotations

import functools
import io
import json
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from hpff_dist.data.cityscapes.folder import IGNORE_INDEX, check_label_values
from hpff_dist.data.cityscapes.shards import MAKE_SEG_SHARDS_HINT
from hpff_dist.data.imagenet.dali_loader import DaliShardLoader, _key_at, resolve_device_id
from hpff_dist.data.imagenet.errors import BadSampleError
from hpff_dist.data.imagenet.shards import ShardedSplit, find_bad_images

READER_NAME = "Reader"
IMAGE_EXTS = "png;jpg;jpeg"
LABEL_EXT = "seg.png"
META_EXT = "json"
CROP_TRIES = 10  # mmseg's RandomCrop: 10 checked candidates, then an 11th unchecked
HUE_DELTA = 18  # mmseg's PhotoMetricDistortion, in cv2's 180-step hue
OUTPUTS = ("images", "labels", "meta", "geometry")
# geometry per sample: image header (h, w), decoded label (h, w, channels), resized (h, w), flip
GEOMETRY = ("ori_h", "ori_w", "label_h", "label_w", "label_c", "new_h", "new_w", "flip")
REMAKE_HINT = "re-make the shard (tools/make_shards.py --layout cityscapes)"


def keep_ratio_size(width: int, height: int, scale: Sequence[float]) -> tuple[int, int]:
    """mmcv's ``rescale_size``: ``(w, h)`` as large as fits in ``scale`` (either orientation),
    each side ``int(side * factor + 0.5)``. The graph computes the same in float64."""
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(width * factor + 0.5), int(height * factor + 0.5)


def choose_crop(
    label: np.ndarray,
    draws: np.ndarray,
    crop_size: tuple[int, int],
    cat_max_ratio: float,
    ignore_index: int = IGNORE_INDEX,
) -> np.ndarray:
    """mmseg's ``RandomCrop.crop_bbox`` on ``label`` (H, W[, 1]) with the offsets given by
    ``draws`` (CROP_TRIES + 1, 2) in [0, 1): ``[y, x, h, w]`` (int32) of the window taken.

    Offsets are ``floor(u * (margin + 1))`` (mmseg: ``randint(0, margin + 1)``); the window is
    clipped to the image as numpy slicing clips it."""
    height, width = label.shape[:2]
    crop_h, crop_w = crop_size
    margins = np.array([max(height - crop_h, 0), max(width - crop_w, 0)])
    offsets = np.minimum((draws * (margins + 1)).astype(np.int64), margins)
    chosen = 0
    if cat_max_ratio < 1.0:
        chosen = CROP_TRIES
        for i in range(CROP_TRIES):
            y, x = offsets[i]
            window = label[y : y + crop_h, x : x + crop_w]
            counts = np.bincount(window.ravel(), minlength=256)
            counts[ignore_index] = 0
            counts = counts[counts > 0]
            if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
                chosen = i
                break
    y, x = offsets[chosen]
    return np.array([y, x, min(crop_h, height), min(crop_w, width)], dtype=np.int32)


def _target_size(encoded, scale, ratio_range, train: bool):
    """(new_h, new_w) as float32 DataNodes, and the image header's (h, w) as int64: RandomResize
    (train) or Resize (val) with keep_ratio, computed as mmcv computes it (float64)."""
    from nvidia.dali import fn, types
    from nvidia.dali import math as dmath

    f64 = dict(dtype=types.FLOAT64)
    shape = fn.peek_image_shape(encoded, dtype=types.INT64)  # HWC from the header
    h, w = shape[0], shape[1]
    hf, wf = fn.cast(h, **f64), fn.cast(w, **f64)
    if train:
        ratio = fn.cast(fn.random.uniform(range=list(ratio_range)), **f64)
        scale_w = dmath.floor(float(scale[0]) * ratio)  # int(s * ratio), s * ratio > 0
        scale_h = dmath.floor(float(scale[1]) * ratio)
        long, short = dmath.max(scale_w, scale_h), dmath.min(scale_w, scale_h)
    else:
        long, short = float(max(scale)), float(min(scale))
    factor = dmath.min(long / dmath.max(hf, wf), short / dmath.min(hf, wf))
    new_w = dmath.floor(wf * factor + 0.5)
    new_h = dmath.floor(hf * factor + 0.5)
    as_float = dict(dtype=types.FLOAT)
    return fn.cast(new_h, **as_float), fn.cast(new_w, **as_float), h, w


def _truncate_u8(x):
    """mmseg's ``convert``: clip to [0, 255] and truncate to uint8 (``astype``)."""
    from nvidia.dali import fn, types
    from nvidia.dali import math as dmath

    return fn.cast(dmath.floor(dmath.clamp(x, 0.0, 255.0)), dtype=types.UINT8)


def _photometric(images):
    """mmseg's PhotoMetricDistortion on RGB uint8 (see the module docstring for hue/saturation)."""
    from nvidia.dali import fn, types

    def maybe(probability: float = 0.5):
        return fn.cast(fn.random.coin_flip(probability=probability), dtype=types.FLOAT)

    beta = maybe() * fn.random.uniform(range=[-32.0, 32.0])
    images = _truncate_u8(images + beta)
    alpha = 1.0 + maybe() * (fn.random.uniform(range=[0.5, 1.5]) - 1.0)
    contrast_first = maybe()  # mmseg's mode == 1
    images = _truncate_u8(images * (1.0 + contrast_first * (alpha - 1.0)))
    saturation = 1.0 + maybe() * (fn.random.uniform(range=[0.5, 1.5]) - 1.0)
    hue_steps = fn.random.uniform(values=[float(v) for v in range(-HUE_DELTA, HUE_DELTA)])
    images = fn.hsv(images, hue=maybe() * hue_steps * 2.0, saturation=saturation)
    return _truncate_u8(images * (1.0 + (1.0 - contrast_first) * (alpha - 1.0)))


def build_pipeline(
    tars: list[str],
    indexes: list[str],
    *,
    batch_size: int,
    num_threads: int,
    device_id: int | None,
    shard_id: int,
    num_shards: int,
    train: bool,
    scale: tuple[int, int],
    ratio_range: tuple[float, float],
    crop_size: tuple[int, int],
    cat_max_ratio: float,
    flip_prob: float,
    photometric: bool,
    seed: int,
    prefetch: int = 2,
):
    """The DALI graph: read -> decode (image mixed or cpu, label cpu) -> resize -> crop -> flip
    -> photometric (train) -> BGR CHW; outputs :data:`OUTPUTS`."""
    from nvidia.dali import fn, pipeline_def, types

    gpu = device_id is not None
    # Augmentations differ per rank; the reader's shuffle seed is the same on every rank.
    augment_seed = (seed * 1_000_003 + shard_id) % (2**31 - 1)

    @pipeline_def(
        batch_size=batch_size,
        num_threads=num_threads,
        device_id=device_id,
        seed=augment_seed,
        prefetch_queue_depth=prefetch,
    )
    def cityscapes_pipeline():
        encoded, encoded_label, meta = fn.readers.webdataset(
            paths=tars,
            index_paths=indexes,
            ext=[IMAGE_EXTS, LABEL_EXT, META_EXT],
            missing_component_behavior="error",
            shard_id=shard_id,
            num_shards=num_shards,
            random_shuffle=train,
            seed=seed,
            **({"shuffle_after_epoch": True, "shuffle_after_epoch_seed": seed} if train else {}),
            pad_last_batch=True,
            name=READER_NAME,
        )
        new_h, new_w, ori_h, ori_w = _target_size(encoded, scale, ratio_range, train)
        colour = types.RGB if train and photometric else types.BGR  # fn.hsv works on RGB
        images = fn.decoders.image(encoded, device="mixed" if gpu else "cpu", output_type=colour)
        labels = fn.decoders.image(encoded_label, device="cpu", output_type=types.ANY_DATA)
        label_shape = labels.shape(dtype=types.INT64)
        linear = dict(interp_type=types.INTERP_LINEAR, antialias=False)
        images = fn.resize(images, resize_x=new_w, resize_y=new_h, **linear)
        flip = 0
        if train:
            nearest = dict(interp_type=types.INTERP_NN, antialias=False)
            labels = fn.resize(labels, resize_x=new_w, resize_y=new_h, **nearest)
            draws = fn.random.uniform(range=[0.0, 1.0], shape=[CROP_TRIES + 1, 2])
            window = fn.python_function(
                labels,
                draws,
                function=functools.partial(
                    choose_crop, crop_size=tuple(crop_size), cat_max_ratio=cat_max_ratio
                ),
                num_outputs=1,
            )
            anchor, shape = window[0:2], window[2:4]
            images = fn.slice(images, anchor, shape, axis_names="HW")
            labels = fn.slice(labels, anchor, shape, axis_names="HW")
            flip = fn.random.coin_flip(probability=flip_prob, dtype=types.INT32)
            images = fn.flip(images, horizontal=flip)
            labels = fn.flip(labels, horizontal=flip)
            if photometric:
                images = _photometric(images)
                images = fn.color_space_conversion(
                    images, image_type=types.RGB, output_type=types.BGR
                )
        images = fn.transpose(images, perm=[2, 0, 1])
        values = [ori_h, ori_w, *(label_shape[i] for i in range(3)), new_h, new_w]
        values.append(flip if train else ori_h * 0)
        geometry = fn.cat(*(fn.cast(fn.reshape(v, shape=[1]), dtype=types.INT64) for v in values))
        return images, labels, meta, geometry

    return cityscapes_pipeline()


def _check_pair(
    tar: str, components: list[tuple[str, int, int]], num_classes: int
) -> tuple[str, str] | None:
    """``(key, error)`` if the pair fails the shard writer's check
    (:func:`~hpff_dist.data.cityscapes.shards.pair_problem`: both decode, same size, label
    values) or is a palette label, which DALI's decoder expands to colours; else None."""
    from PIL import Image

    from hpff_dist.data.cityscapes.shards import pair_problem

    parts = {ext: (off, n) for ext, off, n in components}
    key = _key_at(tar, min(off for _, off, _ in components))
    image_ext = next((e for e in IMAGE_EXTS.split(";") if e in parts), None)
    if image_ext is None or LABEL_EXT not in parts:
        return key, f"missing {'image' if image_ext is None else 'label'} component"
    data = {}
    with open(tar, "rb") as f:
        for what, ext in (("image", image_ext), ("label", LABEL_EXT)):
            offset, size = parts[ext]
            f.seek(offset)
            data[what] = f.read(size)
    error = pair_problem(data["image"], data["label"], num_classes, f"{tar}#{key}")
    if error:
        return key, error
    with Image.open(io.BytesIO(data["label"])) as lab:
        if lab.mode == "P":
            return key, "label is a palette PNG (mode P), which DALI decodes to colours"
    return None


def find_bad_pairs(split: ShardedSplit, limit: int = 10) -> list[tuple[str, str, str]]:
    """Scan a split's (image, label) pairs; up to ``limit`` ``(tar, key, error)``.

    Used after DALI reports a failure without saying which sample failed (ImageNet's
    ``find_bad_images`` with the pair check instead of the image check)."""
    check = functools.partial(_check_pair, num_classes=len(split.classes))
    return find_bad_images(split, limit, check=check)


def shard_of(split: ShardedSplit, key: str) -> str:
    """The shard holding ``key`` (searched in the index files: only for error messages)."""
    needle = f" {key}."
    for tar, idx in zip(split.tars, split.indexes):
        with open(idx) as f:
            if needle in f.read():
                return tar
    return "(not found in any index)"


@functools.cache
def _structures() -> tuple[type, type]:
    """mmseg's ``SegDataSample`` and mmengine's ``PixelData`` (mmseg needs the mmcv.ops stand-in)."""
    from hpff_dist import compat

    compat.provide_mmcv_ops_without_compiled_extension()
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    return SegDataSample, PixelData


def cityscapes_metainfo(classes: Sequence[str]) -> dict[str, Any]:
    """``dataset_meta`` for evaluators and visualisers: mmseg's Cityscapes metainfo when the
    shards hold its classes, else the classes alone (pictures then pick fixed colours)."""
    from hpff_dist import compat

    compat.provide_mmcv_ops_without_compiled_extension()
    from mmseg.datasets import CityscapesDataset

    meta = CityscapesDataset.METAINFO
    if tuple(classes) == tuple(meta["classes"]):
        return {**meta, "label_map": None, "reduce_zero_label": False}
    return {"classes": tuple(classes), "label_map": None, "reduce_zero_label": False}


class DaliSegLoader(DaliShardLoader):
    """Iterable of mmseg batches (``inputs`` + ``data_samples``) from a DALI pipeline over
    Cityscapes shards; the ``dali`` backend of ``configs/_base_/datasets/cityscapes_*.py``.

    Args:
        root: directory of the shards (``manifest-<split>.json``, ``classes.json``).
        split: ``train`` or ``val``; ``train`` (default for split 'train') turns on the
            random transforms and shuffling.
        batch_size: per-rank batch size.
        scale, ratio_range: RandomResize's base ``(w, h)`` and ratio range (train); Resize's
            ``(w, h)`` with keep_ratio (val/test).
        crop_size, cat_max_ratio: RandomCrop's ``(h, w)`` and class-share limit (1: off).
        flip_prob: horizontal flip probability. photometric: PhotoMetricDistortion (train).
        num_threads: DALI CPU threads. device: ``auto`` (GPU if present), ``gpu`` or ``cpu``.
        rank, world_size: global rank / number of ranks; default from torch.distributed or env.
        seed: reader shuffle seed (all ranks must agree); augmentations use (seed, rank).
        drop_last: drop the last partial batch (default: ``train``).
        max_bad_samples: samples lost to truncated shards that may be skipped.
        prefetch: DALI prefetch queue depth.
        img_root: folder the shards' relative ``img_path``/``seg_map_path`` are joined to
            (the original Cityscapes tree, for tools that read the image back); default none.
    """

    def __init__(
        self,
        root: str,
        split: str = "train",
        batch_size: int = 2,
        train: bool | None = None,
        scale: Sequence[int] = (2048, 1024),
        ratio_range: Sequence[float] = (0.5, 2.0),
        crop_size: Sequence[int] = (512, 1024),
        cat_max_ratio: float = 0.75,
        flip_prob: float = 0.5,
        photometric: bool = True,
        num_threads: int = 4,
        device: str = "auto",
        rank: int | None = None,
        world_size: int | None = None,
        seed: int = 0,
        drop_last: bool | None = None,
        max_bad_samples: int = 0,
        prefetch: int = 2,
        img_root: str | None = None,
    ) -> None:
        from nvidia.dali.plugin.pytorch import DALIRaggedIterator, LastBatchPolicy

        indexes = self._open_split(
            root,
            split,
            batch_size,
            train,
            drop_last,
            max_bad_samples,
            rank,
            world_size,
            hint=MAKE_SEG_SHARDS_HINT,
        )
        self.split = split
        self.img_root = img_root
        self.metainfo = cityscapes_metainfo(self.split_info.classes)
        self.data_prefix = {"img_path": os.path.join(img_root or "", "leftImg8bit", split)}
        split_info = self.split_info
        self.device_id = resolve_device_id(device)
        self.pipeline = build_pipeline(
            split_info.tars,
            indexes,
            batch_size=batch_size,
            num_threads=num_threads,
            device_id=self.device_id,
            shard_id=self.rank,
            num_shards=self.world_size,
            train=self.train,
            scale=tuple(scale),
            ratio_range=tuple(ratio_range),
            crop_size=tuple(crop_size),
            cat_max_ratio=cat_max_ratio,
            flip_prob=flip_prob,
            photometric=photometric,
            seed=seed,
            prefetch=prefetch,
        )
        self.pipeline.build()
        self.iterator = DALIRaggedIterator(
            self.pipeline,
            list(OUTPUTS),
            output_types=[DALIRaggedIterator.SPARSE_LIST_TAG] * len(OUTPUTS),
            reader_name=READER_NAME,
            last_batch_policy=LastBatchPolicy.FILL,
            auto_reset=True,
        )

    def __iter__(self) -> Iterator[dict[str, list]]:
        try:
            for outputs, take in self._trimmed():
                yield self._pack(outputs, take)
        except RuntimeError as error:
            named = self._bad_sample_error(error)
            if named is error:  # ours (BadSampleError, CorruptDataError) or not a decode
                raise
            raise named from error

    def _pack(self, outputs: dict[str, list], take: int) -> dict[str, list]:
        """``PackSegInputs`` + ``pseudo_collate`` of the first ``take`` samples."""
        segdatasample, pixeldata = _structures()
        inputs, samples = [], []
        num_classes = len(self.metainfo["classes"])
        for i in range(take):
            meta = json.loads(bytes(outputs["meta"][i].cpu().numpy()).decode("utf-8"))
            geometry = dict(zip(GEOMETRY, outputs["geometry"][i].tolist()))
            self._check_geometry(meta, geometry)
            label = outputs["labels"][i].cpu()[..., 0]
            check_label_values(label.numpy(), meta["seg_map_path"], num_classes)
            image = outputs["images"][i]
            ori = (geometry["ori_h"], geometry["ori_w"])
            info = {
                "img_path": self._path(meta["img_path"]),
                "seg_map_path": self._path(meta["seg_map_path"]),
                "ori_shape": ori,
                "img_shape": tuple(image.shape[1:]),
                "scale_factor": (geometry["new_w"] / ori[1], geometry["new_h"] / ori[0]),
                "reduce_zero_label": False,
            }
            if self.train:
                flipped = bool(geometry["flip"])
                info.update(flip=flipped, flip_direction="horizontal" if flipped else None)
            sample = segdatasample(metainfo=info)
            sample.gt_sem_seg = pixeldata(data=label[None].long())
            inputs.append(image)
            samples.append(sample)
        return {"inputs": inputs, "data_samples": samples}

    def _path(self, relative: str) -> str:
        return os.path.join(self.img_root, relative) if self.img_root else relative

    def _check_geometry(self, meta: dict, geometry: dict[str, int]) -> None:
        """A label whose size differs from its image's, or with more than one channel: the
        shard is wrong (a misaligned pair must never train or be scored)."""
        image = (geometry["ori_h"], geometry["ori_w"])
        label = (geometry["label_h"], geometry["label_w"])
        if label == image and geometry["label_c"] == 1:
            return
        key = _key_of(meta)
        what = (
            f"label {label[0]}x{label[1]} differs from its image {image[0]}x{image[1]} (h x w)"
            if label != image
            else f"label has {geometry['label_c']} channels, not one 8-bit channel of class "
            "ids (DALI expands a palette PNG to colours: write the label as mode L)"
        )
        raise BadSampleError(
            f"shard={shard_of(self.split_info, key)} key={key}: {what}. The pair cannot be "
            f"aligned; fix the source files and {REMAKE_HINT}"
        )

    def _bad_sample_error(self, error: RuntimeError) -> RuntimeError:
        """DALI names the failing operator, not the sample: find the bad pair(s) with PIL."""
        text = str(error)
        if isinstance(error, BadSampleError) or not any(
            op in text for op in ("decoders", "peek_image_shape")
        ):
            return error
        bad = find_bad_pairs(self.split_info)
        found = "; ".join(f"shard={t} key={k}: {e}" for t, k, e in bad) or (
            "no pair fails a PIL decode; see DALI's message"
        )
        return BadSampleError(
            f"DALI could not decode a sample: {found}. DALI cannot skip a sample mid-run, so "
            f"fix the source files and {REMAKE_HINT}, or use the webdataset backend, which "
            f"skips bad samples under max_bad_samples.\nDALI: {text}"
        )


def _key_of(meta: dict) -> str:
    """The sample's shard key: recorded in its ``.json`` by the writer; for shards written
    before it was, ``<city>/<stem>`` from ``leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png``."""
    if "key" in meta:
        return meta["key"]
    city, name = meta["img_path"].split("/")[-2:]
    stem = name.rsplit(".", 1)[0]
    return f"{city}/{stem.removesuffix('_leftImg8bit')}"


__all__ = [
    "DaliSegLoader",
    "build_pipeline",
    "choose_crop",
    "cityscapes_metainfo",
    "find_bad_pairs",
    "keep_ratio_size",
]
