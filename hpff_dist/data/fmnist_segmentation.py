"""A real-data segmentation task that runs anywhere: Fashion-MNIST garments on a canvas.

There is no Cityscapes on a CPU test machine, but Debian's ``dataset-fashion-mnist`` is (see
:mod:`hpff_dist.data.fashion_mnist`). Each canvas here holds a few real garment photos
(train split: Fashion-MNIST's 60000 training images; val: its 10000 test images, so no garment
of the val canvases was seen in training), each scaled to a random size, tinted a random colour
and pasted at a random position over a noisy background, later garments in front. A pixel's
label is the class of the front-most garment visible there (its grey level above
``threshold``), else background: 11 classes, background + Fashion-MNIST's 10.

Canvas ``i`` of a split is a function of ``(seed, split, i)`` only, drawn with its own numpy
generator (:meth:`FashionMNISTSegmentation.layout`): the same in every epoch, process and
worker, nothing cached or written. The training randomness (``mmseg.RandomFlip``) is the
pipeline's, seeded per (seed, epoch, index) by :class:`SeededItems` like every other dataset.

Items are what mmseg's ``LoadImageFromFile`` + ``LoadAnnotations`` would give for a PNG pair
(``img`` BGR uint8, ``gt_seg_map``, ``seg_fields``, ``ori_shape`` ...), passed through
``pipeline`` (mmseg's transforms, named with their scope: ``mmseg.RandomFlip``,
``mmseg.PackSegInputs``), so mmseg's ``IoUMetric`` and ``LocalEncoderDecoder`` take them as
they take Cityscapes'. mmseg is imported when a dataset is built, not with this module.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from hpff_dist.data.fashion_mnist import CLASSES as FMNIST_CLASSES
from hpff_dist.data.fashion_mnist import DEBIAN_ROOT, FashionMNIST
from hpff_dist.data.sample_seeds import SeededItems
from hpff_dist.registry import DATASETS

__all__ = ["CLASSES", "PALETTE", "FashionMNISTSegmentation", "Garment"]

CLASSES = ("background", *FMNIST_CLASSES)
#: RGB per class: black background, then ten well-separated colours (matplotlib's tab10).
PALETTE = (
    (0, 0, 0), (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)  # fmt: skip
#: split -> (Fashion-MNIST split its garments come from, code mixed into the canvas seed).
SPLITS = {"train": ("train", 0), "val": ("test", 1)}


class Garment(NamedTuple):
    """One pasted garment: its Fashion-MNIST image, class (0-9, not the canvas label), square
    box (top, left, side) and RGB tint (0-255)."""

    source: int
    label: int
    top: int
    left: int
    side: int
    colour: tuple[float, float, float]


def _range(value: Sequence[int] | int, name: str, low: int) -> tuple[int, int]:
    lo, hi = (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))
    if not low <= lo <= hi:
        raise ValueError(f"{name} must be (min, max) with {low} <= min <= max, got {value!r}")
    return lo, hi


@DATASETS.register_module()
class FashionMNISTSegmentation(SeededItems, Dataset):
    """Canvases of Fashion-MNIST garments with per-pixel labels (background + 10 classes).

    Args:
        root: folder with Fashion-MNIST's four ``*-ubyte.gz`` files (Debian's package).
        split: ``'train'`` (garments from Fashion-MNIST's training images) or ``'val'`` (from
            its test images).
        num_canvases: canvases in the split (they are generated, not read: any number).
        canvas_size: (H, W) of a canvas (an int: square).
        garments: (min, max) garments per canvas.
        garment_size: (min, max) side in pixels of a garment's square (28x28 source) box.
        threshold: grey level (0-255) above which a garment pixel is labelled as the garment;
            fainter pixels are blended into what is behind and keep its label.
        seed: the split's canvases; another seed, other canvases.
        pipeline: mmseg transforms, built under our registry scope (``mmseg.`` names mmseg's).
    """

    def __init__(
        self,
        root: str = DEBIAN_ROOT,
        split: str = "train",
        num_canvases: int = 1000,
        canvas_size: Sequence[int] | int = (64, 64),
        garments: Sequence[int] | int = (1, 3),
        garment_size: Sequence[int] | int = (24, 40),
        threshold: int = 25,
        seed: int = 0,
        pipeline: Sequence[dict | Callable] = (),
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"FashionMNISTSegmentation split must be one of {sorted(SPLITS)}")
        if num_canvases < 1:
            raise ValueError(f"num_canvases must be >= 1, got {num_canvases}")
        size = (canvas_size, canvas_size) if isinstance(canvas_size, int) else canvas_size
        self.canvas_size = (int(size[0]), int(size[1]))
        self.garments = _range(garments, "garments", 1)
        self.garment_size = _range(garment_size, "garment_size", 1)
        if self.garment_size[1] > min(self.canvas_size):
            raise ValueError(
                f"garment_size {self.garment_size} does not fit the {self.canvas_size} canvas: "
                "lower its max or raise canvas_size"
            )
        if not 0 <= threshold < 255:
            raise ValueError(f"threshold is a grey level in 0-254, got {threshold}")
        source_split, self._split_code = SPLITS[split]
        try:
            source = FashionMNIST(root=root, split=source_split)
        except FileNotFoundError as error:
            raise FileNotFoundError(
                f"FashionMNISTSegmentation draws its garments from Fashion-MNIST: {error}"
            ) from None
        self.images = source.images[:, 0].numpy()  # (N, 28, 28) uint8
        self.targets = source.targets.numpy()
        self.split, self.num_canvases, self.threshold, self.seed = (
            split, int(num_canvases), int(threshold), int(seed),
        )  # fmt: skip
        self.pipeline = _build_pipeline(pipeline)

    @property
    def metainfo(self) -> dict[str, Any]:
        """Class names and colours, read by mmseg's ``IoUMetric`` and the picture hook."""
        return {"classes": CLASSES, "palette": [list(c) for c in PALETTE]}

    def __len__(self) -> int:
        return self.num_canvases

    def layout(self, index: int) -> tuple[np.ndarray, list[Garment]]:
        """Canvas ``index``'s background (H, W, 3 float32 RGB) and garments, back to front:
        everything random about it, from a generator seeded by (seed, split, index) alone."""
        if not 0 <= index < self.num_canvases:
            raise IndexError(f"canvas {index} of a {self.num_canvases}-canvas split")
        rng = np.random.default_rng([self.seed, self._split_code, int(index)])
        h, w = self.canvas_size
        base = rng.uniform(0.0, 90.0, 3)
        background = (base + rng.normal(0.0, 8.0, (h, w, 3))).astype(np.float32)
        garments = []
        for _ in range(int(rng.integers(self.garments[0], self.garments[1] + 1))):
            source = int(rng.integers(len(self.images)))
            side = int(rng.integers(self.garment_size[0], self.garment_size[1] + 1))
            top, left = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
            colour = tuple(float(c) for c in rng.uniform(60.0, 255.0, 3))
            garments.append(Garment(source, int(self.targets[source]), top, left, side, colour))
        return background, garments

    def garment_grey(self, garment: Garment) -> np.ndarray:
        """The garment's photo resized to its box (bilinear, half-pixel centres), 0-255."""
        image = torch.from_numpy(self.images[garment.source].astype(np.float32))[None, None]
        size = (garment.side, garment.side)
        return F.interpolate(image, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()

    def canvas(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Canvas ``index`` as (H, W, 3) uint8 RGB and its (H, W) uint8 labels."""
        image, garments = self.layout(index)
        labels = np.zeros(self.canvas_size, np.uint8)
        for garment in garments:
            grey = self.garment_grey(garment)
            box = np.s_[garment.top : garment.top + garment.side,
                        garment.left : garment.left + garment.side]  # fmt: skip
            # Opaque from half the grey range up, faint edges blended; shaded by the photo.
            alpha = np.clip(grey / 127.5, 0.0, 1.0)[..., None]
            tone = np.asarray(garment.colour, np.float32) * (0.35 + 0.65 * grey[..., None] / 255)
            image[box] = image[box] * (1.0 - alpha) + tone * alpha
            labels[box][grey > self.threshold] = garment.label + 1
        return np.clip(np.rint(image), 0, 255).astype(np.uint8), labels

    def get_data_info(self, index: int) -> dict[str, Any]:
        """Canvas ``index`` as mmseg's loading transforms leave a sample (``img`` BGR, as
        ``LoadImageFromFile`` reads it; the model's preprocessor turns it to RGB)."""
        rgb, labels = self.canvas(index)
        name = f"fmnist_seg/{self.split}/{index:06d}.png"  # no file: a name for logs
        return dict(
            img=np.ascontiguousarray(rgb[..., ::-1]),
            gt_seg_map=labels,
            seg_fields=["gt_seg_map"],
            img_path=name,
            seg_map_path=name,
            ori_shape=self.canvas_size,
            img_shape=self.canvas_size,
            reduce_zero_label=False,
            sample_idx=int(index),
        )

    def load_item(self, index: int) -> Any:
        return self.pipeline(self.get_data_info(index))


def _build_pipeline(pipeline: Sequence[dict | Callable]) -> Callable[[dict], Any]:
    """mmengine's ``Compose`` of the transforms, built under our scope whoever calls (as
    ``CityscapesFolder`` does): ``mmseg.PackSegInputs`` is mmseg's, a plain name ours first."""
    from mmengine.dataset import Compose
    from mmengine.registry import DefaultScope

    from hpff_dist import compat
    from hpff_dist.registry import SCOPE, TRANSFORMS

    compat.provide_mmcv_ops_without_compiled_extension()
    import mmseg.datasets  # noqa: F401  (registers mmseg's transforms)

    with DefaultScope.overwrite_default_scope(SCOPE):
        return Compose([TRANSFORMS.build(t) if isinstance(t, dict) else t for t in pipeline])
