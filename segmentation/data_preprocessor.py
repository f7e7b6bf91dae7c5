"""mmseg's ``SegDataPreProcessor`` plus what the local-learning step reads in training.

Training batches also get ``targets`` (the padded ground truth as (N, H, W) long label maps)
and ``images`` (the RGB input in [0, 1], for InfoPro's reconstruction heads); prediction
batches are mmseg's unchanged (``inputs`` + ``data_samples``), so mmseg's inference,
``SegTTAModel`` and ``IoUMetric`` see what they expect.

A training crop smaller than ``size`` is an error by default: mmseg pads it silently (images
with ``pad_val``, labels with 255), which on Cityscapes means the resize scale and the crop
do not fit (e.g. a 512x1024 crop of an image resized below 512 rows). ``allow_padding=True``
keeps mmseg's behaviour for datasets with small images.
"""

from __future__ import annotations

from typing import Any

import torch
from mmseg.models.data_preprocessor import SegDataPreProcessor

from hpff_dist.registry import MODELS


@MODELS.register_module()
class LocalSegDataPreProcessor(SegDataPreProcessor):
    """``SegDataPreProcessor`` whose training output adds ``targets`` and ``images``."""

    def __init__(self, *args: Any, allow_padding: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.allow_padding = allow_padding
        if not self._enable_normalize:
            raise ValueError("LocalSegDataPreProcessor needs mean and std (uint8 images in)")

    def forward(self, data: dict, training: bool = False) -> dict[str, Any]:
        if training and self.size is not None and not self.allow_padding:
            self._check_sizes(data)
        out = super().forward(data, training)
        if not training:
            return out
        samples = out["data_samples"]
        out["targets"] = torch.stack([s.gt_sem_seg.data[0] for s in samples]).long()
        mean, std = self.mean.to(out["inputs"]), self.std.to(out["inputs"])
        out["images"] = ((out["inputs"] * std + mean) / 255.0).clamp_(0.0, 1.0)
        return out

    def _check_sizes(self, data: dict) -> None:
        want = tuple(self.size)
        for index, image in enumerate(data["inputs"]):
            got = tuple(image.shape[-2:])
            if got[0] < want[0] or got[1] < want[1]:
                path = ""
                samples = data.get("data_samples")
                if samples is not None and "img_path" in samples[index]:
                    path = f" ({samples[index].img_path})"
                raise ValueError(
                    f"training crop {got[0]}x{got[1]}{path} is smaller than the {want[0]}x"
                    f"{want[1]} crop size: the image after RandomResize is smaller than "
                    "RandomCrop's crop_size. Raise the resize scale or ratio_range, or lower "
                    "crop_size (and model.image_size, data_preprocessor.size); "
                    "model.data_preprocessor.allow_padding=True pads as mmseg does"
                )
