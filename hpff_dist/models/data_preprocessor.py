"""Batch preparation for classifiers: device transfer and normalisation in one place.

Pipelines yield images in [0, 1]; normalising here (not in the dataset) means the model knows
mean/std and can hand InfoPro's decoders the raw image to reconstruct without undoing a
normalisation it never saw.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from mmengine.model import BaseDataPreprocessor

from hpff_dist.registry import MODELS


@MODELS.register_module()
class ClassifierDataPreprocessor(BaseDataPreprocessor):
    """``[images in [0,1], labels]`` -> ``dict(inputs=normalised, images=raw, targets=labels)``,
    in NHWC memory order with ``channels_last`` (the model's convs then need no reorder)."""

    def __init__(
        self,
        mean: Sequence[float] = (0.5,),
        std: Sequence[float] = (0.5,),
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if len(mean) != len(std):
            raise ValueError(f"mean {list(mean)} and std {list(std)} need the same length")
        self.register_buffer(
            "mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), False
        )
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), False)

    def forward(self, data: Sequence | dict, training: bool = False) -> dict:
        if isinstance(data, dict):
            images, targets = data["images"], data["targets"]
        else:
            images, targets = data[0], data[1]
        images = self.cast_data(images).float().contiguous(memory_format=self.memory_format)
        targets = self.cast_data(torch.as_tensor(targets)).long()
        if images.shape[1] != self.mean.shape[1]:
            raise ValueError(
                f"images have {images.shape[1]} channels but the data preprocessor's mean/std "
                f"have {self.mean.shape[1]}; set model.data_preprocessor.mean/std for this dataset"
            )
        inputs = (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)
        return dict(inputs=inputs, images=images, targets=targets)
