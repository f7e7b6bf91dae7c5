"""A picture of what a segmentation run learnt: image | ground truth | prediction, one row per
validation image, with a colour legend, written at the end of training.

Why a hook: the picture comes from the trained model and the run's own validation data, with
no checkpoint to reload and nothing to set up; any dataset whose samples pack uint8 images
(``mmseg.PackSegInputs``) and whose ``metainfo`` has ``classes`` and ``palette`` works. Small
images are enlarged by an integer factor (nearest) so that pixels stay pixels.
"""

from __future__ import annotations

import os.path as osp
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from mmengine.dataset import pseudo_collate
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from PIL import Image, ImageDraw

from hpff_dist.registry import HOOKS
from segmentation.visualize import colorize, save_grid, side_by_side

__all__ = ["SegPredictionGrid", "legend"]


def _enlarge(image: np.ndarray, factor: int) -> np.ndarray:
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def legend(classes: Sequence[str], palette: Sequence[Sequence[int]], width: int) -> np.ndarray:
    """(H, width, 3) uint8: a swatch and the name of each class, as many per line as fit."""
    swatch, cell = 10, max(len(c) for c in classes) * 6 + 18  # PIL's default font: 6 px/char
    per_line = max(1, width // cell)
    lines = -(-len(classes) // per_line)
    image = Image.new("RGB", (width, lines * 16 + 4), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    for index, (name, colour) in enumerate(zip(classes, palette)):
        x, y = (index % per_line) * cell + 2, (index // per_line) * 16 + 3
        draw.rectangle([x, y, x + swatch, y + swatch], fill=tuple(int(c) for c in colour))
        draw.text((x + swatch + 4, y), name, fill=(0, 0, 0))
    return np.asarray(image)


@HOOKS.register_module()
class SegPredictionGrid(Hook):
    """After training, predict the first ``num_images`` validation images and write
    ``work_dir/<filename>``: rows of image | ground truth | prediction in the dataset's
    palette, a legend below (rank 0 only).

    Args:
        num_images: validation images drawn (the first ones: the same in every run).
        filename: the PNG's name in the work dir.
        scale: integer enlargement; ``None`` picks one that makes images about 160 px tall.
    """

    priority = "LOW"

    def __init__(
        self, num_images: int = 8, filename: str = "predictions.png", scale: int | None = None
    ) -> None:
        if num_images < 1 or (scale is not None and scale < 1):
            raise ValueError(f"need num_images >= 1 and scale >= 1, got {num_images}, {scale}")
        self.num_images, self.filename, self.scale = num_images, filename, scale
        self.path: str | None = None

    def after_train(self, runner: Any) -> None:
        if runner.rank != 0:
            return
        loop = getattr(runner, "val_loop", None)
        dataset = getattr(getattr(loop, "dataloader", None), "dataset", None)
        if dataset is None:
            print_log("SegPredictionGrid: no validation data, no picture", "current")
            return
        self.path = self.draw(runner.model, dataset, osp.join(runner.work_dir, self.filename))
        print_log(f"SegPredictionGrid: image | ground truth | prediction in {self.path}", "current")

    def draw(self, model: Any, dataset: Any, path: str) -> str:
        """Predict the first images of ``dataset`` with ``model`` and write the grid to
        ``path``; the model's train/eval mode is restored."""
        model = model.module if is_model_wrapper(model) else model
        samples = [dataset[i] for i in range(min(self.num_images, len(dataset)))]
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                predictions = model.test_step(pseudo_collate(samples))
        finally:
            model.train(was_training)
        meta = dataset.metainfo
        palette, classes = meta["palette"], meta["classes"]
        bgr = getattr(model.data_preprocessor, "channel_conversion", False)
        rows = []
        for sample, predicted in zip(samples, predictions):
            image = sample["inputs"].numpy().transpose(1, 2, 0)
            image = np.ascontiguousarray(image[..., ::-1] if bgr else image).astype(np.uint8)
            scale = self.scale or max(1, round(160 / image.shape[0]))
            truth = sample["data_samples"].gt_sem_seg.data[0].numpy()
            guess = predicted.pred_sem_seg.data[0].cpu().numpy()
            panels = [image, colorize(truth, palette), colorize(guess, palette)]
            rows.append(side_by_side([_enlarge(p, scale) for p in panels]))
        rows.append(legend(classes, palette, rows[0].shape[1]))
        return str(save_grid(path, rows))
