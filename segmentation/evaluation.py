"""Segmentation evaluation: mmseg's IoU metric with per-class values, and prediction pictures.

``PerClassIoUMetric`` is mmseg's ``IoUMetric`` (its per-image areas and its
``total_area_to_metrics``) returning what mmseg only prints: every class's IoU and accuracy by
name (``IoU.road``, ``Acc.road`` ...), beside ``aAcc``, ``mIoU`` and ``mAcc``, so that
``tools/test.py --out`` can write them. Values are percentages, not rounded (mmseg rounds to
two decimals); NaN where a class is in neither prediction nor ground truth (IoU) or not in the
ground truth (Acc), left out of the means as mmseg does. Images without ground truth (a test
split: no ``gt_sem_seg``) are counted, not a ``KeyError``: with none labelled the metric says
so and reports only that count.

``SegPredictionPictures`` (a hook) writes image | ground truth | prediction per test image
(``segmentation.visualize``, the dataset's palette), two panels where there is no ground truth.
"""

from __future__ import annotations

import io
import logging
import os
import os.path as osp
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmseg.evaluation.metrics import IoUMetric
from PIL import Image

from hpff_dist.registry import HOOKS, METRICS
from segmentation.visualize import IGNORE_INDEX, save_prediction

__all__ = ["NO_LABELS_KEY", "PerClassIoUMetric", "SegPredictionPictures", "prediction_path"]

#: metric key counting the images evaluated without ground truth (present when > 0).
NO_LABELS_KEY = "images_without_labels"


@METRICS.register_module()
class PerClassIoUMetric(IoUMetric):
    """mmseg's ``IoUMetric`` whose results include each class's values by name (see the
    module docstring). Arguments are mmseg's (``iou_metrics=['mIoU']``, ``ignore_index``,
    ``nan_to_num``, ``output_dir`` ...)."""

    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        """Per image: mmseg's (intersection, union, prediction, label) areas, or ``None`` for
        an image without ground truth; with ``output_dir`` the label PNG, as mmseg writes."""
        num_classes = len(self.dataset_meta["classes"])
        for sample in data_samples:
            pred = sample["pred_sem_seg"]["data"].squeeze()
            if self.format_only or "gt_sem_seg" not in sample:
                areas = None
            else:
                label = sample["gt_sem_seg"]["data"].squeeze().to(pred)
                areas = self.intersect_and_union(pred, label, num_classes, self.ignore_index)
            self.results.append((sample.get("img_path"), areas))
            if self.output_dir is not None:
                self._write_label_png(sample, pred)

    def _write_label_png(self, sample: dict, pred: torch.Tensor) -> None:
        if "img_path" not in sample:
            raise KeyError(
                "PerClassIoUMetric(output_dir=...) names each PNG after its image, but this "
                "prediction has no img_path: a TTA model that drops the image's metainfo "
                "(mmseg < 1.1's SegTTAModel). Use tta_model = dict(type='SegTTAAverage')"
            )
        name = osp.splitext(osp.basename(sample["img_path"]))[0] + ".png"
        mask = pred.cpu().numpy() + (1 if sample.get("reduce_zero_label", False) else 0)
        Image.fromarray(mask.astype(np.uint8)).save(osp.join(self.output_dir, name))

    def evaluate(self, size: int) -> dict:
        """mmengine's evaluation, with each image counted once whatever the loader's split.

        mmengine collects the ranks' results interleaved and keeps the first ``size``: right
        for ``DefaultSampler``'s interleaved split, wrong for loaders that give each rank a
        contiguous block padded at its end (DALI's readers, shard-local samplers), where a
        real image would be dropped and a padded repeat counted. So every result is
        collected (the total over ranks) and repeats are removed by image path.
        """
        from mmengine.dist import all_reduce, get_world_size

        self._dataset_size = size
        total = torch.tensor(len(self.results), dtype=torch.int64)
        if get_world_size() > 1:
            all_reduce(total)
        return super().evaluate(int(total))

    def _unique(self, results: list) -> list:
        """The per-image areas, each image once (by path; the first ``size`` without paths)."""
        size = getattr(self, "_dataset_size", len(results))
        if any(key is None for key, _ in results):
            return [areas for _, areas in results[:size]]
        unique: dict[str, Any] = {}
        for key, areas in results:
            unique.setdefault(key, areas)
        if len(unique) != size:
            print_log(
                f"PerClassIoUMetric: {len(unique)} distinct images evaluated, the dataset "
                f"has {size}",
                "current",
                logging.WARNING,
            )
        return list(unique.values())

    def compute_metrics(self, results: list) -> dict[str, float]:
        """``aAcc``, ``m<metric>``, ``<metric>.<class>`` for every class (percent), and
        ``images_without_labels`` when some had none."""
        results = self._unique(results)
        labelled = [r for r in results if r is not None]
        unlabelled = len(results) - len(labelled)
        if self.format_only:
            print_log(f"format_only: no metrics ({len(results)} predictions)", "current")
            return {}
        if not labelled:
            print_log(
                f"PerClassIoUMetric: none of the {unlabelled} test images has ground-truth "
                "labels (no gt_sem_seg: e.g. a test split with images only), so there is no "
                "mIoU/aAcc; the predictions were made (tools/test.py --show-dir DIR writes "
                "them). Evaluate a split with labels (Cityscapes: val) for metrics.",
                "current",
                logging.WARNING,
            )
            return {NO_LABELS_KEY: float(unlabelled)}
        intersect, union, pred_area, label_area = (sum(parts) for parts in zip(*labelled))
        if float(label_area.sum()) == 0:
            print_log(
                f"PerClassIoUMetric: every ground-truth pixel of the {len(labelled)} labelled "
                f"images is ignore_index={self.ignore_index} (Cityscapes' public test labels "
                "are all void), so there is no mIoU/aAcc. Evaluate the val split for metrics.",
                "current",
                logging.WARNING,
            )
            return {NO_LABELS_KEY: float(len(results))}
        per_class = self.total_area_to_metrics(
            intersect, union, pred_area, label_area, self.metrics, self.nan_to_num, self.beta
        )
        metrics = {"aAcc": float(per_class.pop("aAcc")) * 100}
        with np.errstate(invalid="ignore"):
            for name, values in per_class.items():
                values = np.asarray(values, dtype=np.float64)
                finite = values[~np.isnan(values)]
                metrics[f"m{name}"] = float(finite.mean()) * 100 if finite.size else float("nan")
        classes = list(self.dataset_meta["classes"])
        for name, values in per_class.items():
            for cls, value in zip(classes, np.asarray(values, dtype=np.float64)):
                metrics[f"{name}.{cls}"] = float(value) * 100
        self._log_class_table(classes, per_class)
        if unlabelled:
            print_log(
                f"PerClassIoUMetric: {unlabelled} of {len(results)} images had no ground truth "
                "and are not in the metrics",
                "current",
                logging.WARNING,
            )
            metrics[NO_LABELS_KEY] = float(unlabelled)
        return metrics

    @staticmethod
    def _log_class_table(classes: list[str], per_class: dict[str, Any]) -> None:
        """mmseg's per-class table (rounded to two decimals, as mmseg prints it)."""
        from prettytable import PrettyTable

        table = PrettyTable()
        table.add_column("Class", classes)
        for name, values in per_class.items():
            table.add_column(name, np.round(np.asarray(values, dtype=np.float64) * 100, 2))
        print_log("per class results:", "current")
        print_log("\n" + table.get_string(), "current")


def prediction_path(
    out_dir: str, img_path: str, img_root: str | None, img_suffix: str | None = None
) -> str:
    """``out_dir/<img_path relative to the dataset's image folder>`` as a PNG (so
    ``city/name.png``), or ``out_dir/<basename>.png`` for an image outside it. A shard member
    (``wds://<shard>#<city>/<stem>.png``) is named by its key and the dataset's image suffix,
    so the pictures of every backend have the folder's names."""
    rel = osp.basename(img_path)
    if "#" in img_path:
        key = img_path.rpartition("#")[2].partition(".")[0]
        rel = key + (img_suffix or ".png")
    elif img_root:
        candidate = osp.relpath(osp.abspath(img_path), osp.abspath(img_root))
        if not candidate.startswith(".."):
            rel = candidate
    return osp.join(out_dir, osp.splitext(rel)[0] + ".png")


@HOOKS.register_module()
class SegPredictionPictures(Hook):
    """After each test batch, write image | ground truth | prediction (colour-coded with the
    dataset's palette; ignored pixels black) as one PNG per image under ``out_dir``, at the
    image's size; image | prediction where the sample has no ground truth. Each rank writes
    its own images (the padded repeats of a distributed sampler rewrite identical files,
    atomically)."""

    priority = "LOW"

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.palette: list | None = None
        self.img_root: str | None = None
        self.img_suffix: str | None = None
        self.written = {"with": 0, "without": 0}

    def before_test(self, runner: Any) -> None:
        dataset = runner.test_loop.dataloader.dataset
        meta = getattr(dataset, "metainfo", {}) or {}
        classes = meta.get("classes") or ()
        self.palette = meta.get("palette")
        if not self.palette:  # a dataset without colours: fixed ones, the same every run
            rng = np.random.default_rng(0)
            self.palette = rng.integers(0, 256, (max(len(classes), IGNORE_INDEX), 3)).tolist()
        self.img_root = (getattr(dataset, "data_prefix", None) or {}).get("img_path")
        self.img_suffix = getattr(dataset, "img_suffix", None)
        self.written = {"with": 0, "without": 0}  # ground truth

    def after_test_iter(
        self, runner: Any, batch_idx: int, data_batch: Any = None, outputs: Any = None
    ) -> None:
        for index, sample in enumerate(outputs or []):
            img_path = sample.metainfo.get("img_path") or _batch_img_path(data_batch, index)
            if img_path is None:
                raise KeyError(
                    "SegPredictionPictures: the prediction and its batch name no img_path, so "
                    "there is no image to draw it beside (a TTA model that drops the image's "
                    "metainfo?). Use tta_model = dict(type='SegTTAAverage')"
                )
            pred = _label_map(sample.pred_sem_seg.data)
            truth = _label_map(sample.gt_sem_seg.data) if "gt_sem_seg" in sample else None
            with _open_image(img_path, data_batch, index) as image:
                rgb = image.convert("RGB")
                if rgb.size != (pred.shape[1], pred.shape[0]):
                    rgb = rgb.resize((pred.shape[1], pred.shape[0]), Image.BILINEAR)
                rgb = np.asarray(rgb)
            target = prediction_path(self.out_dir, img_path, self.img_root, self.img_suffix)
            partial = f"{target}.rank{get_rank()}.partial.png"
            save_prediction(partial, rgb, pred, self.palette, truth)
            os.replace(partial, target)
            self.written["with" if truth is not None else "without"] += 1

    def after_test(self, runner: Any) -> None:
        counts = self.written
        print_log(
            f"SegPredictionPictures (rank {get_rank()}): {counts['with']} pictures image | "
            f"ground truth | prediction, {counts['without']} image | prediction (no ground "
            f"truth), in {self.out_dir}",
            "current",
        )


def _label_map(data: torch.Tensor) -> np.ndarray:
    """(1, H, W) or (H, W) class ids -> (H, W) numpy array."""
    return data.squeeze(0).cpu().numpy() if data.dim() == 3 else data.cpu().numpy()


def _open_image(img_path: str, data_batch: Any, index: int) -> Image.Image:
    """The image a prediction is drawn beside: the file (or a ``wds://`` shard member) through
    mmengine's file backends, else the batch's own input (a DALI batch names the image by its
    path inside the dataset, which need not exist here)."""
    from mmengine import fileio

    try:
        return Image.open(io.BytesIO(fileio.get(img_path)))
    except OSError:  # FileNotFoundError included
        inputs = data_batch.get("inputs") if isinstance(data_batch, dict) else None
        if not inputs or index >= len(inputs) or isinstance(inputs[0], (list, tuple)):
            raise
        bgr = inputs[index].permute(1, 2, 0).cpu().numpy()
        return Image.fromarray(np.ascontiguousarray(bgr[..., ::-1]))


def _batch_img_path(data_batch: Any, index: int) -> str | None:
    """The image path of sample ``index`` in the loader's batch (a TTA batch: its first
    view), for merged predictions that lost their metainfo."""
    samples = data_batch.get("data_samples") if isinstance(data_batch, dict) else None
    if not samples:
        return None
    first = samples[0] if isinstance(samples[0], (list, tuple)) else samples
    if index >= len(first):
        return None
    return first[index].metainfo.get("img_path")
