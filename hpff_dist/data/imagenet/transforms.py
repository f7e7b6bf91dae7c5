"""The paper's ImageNet transforms (torchvision), and the constants the DALI pipeline shares.

Train: RandomResizedCrop(image_size) + horizontal flip. Val: resize the shorter side to
``resize_size`` (256 for 224) + centre crop. Both normalise with the ImageNet mean/std, unless
``normalize=False``: then images stay in [0, 1], which is what training uses, because our models
normalise in their data preprocessor and InfoPro's decoders reconstruct the un-normalised image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torchvision.transforms import v2

from hpff_dist.registry import TRANSFORMS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def default_resize_size(image_size: int) -> int:
    """256 for 224: the paper's val resize, scaled with the crop for small test images."""
    return int(round(image_size * 256 / 224))


@TRANSFORMS.register_module(name="ImageNetTransform")
def build_imagenet_transform(
    train: bool,
    image_size: int = 224,
    resize_size: int | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    normalize: bool = True,
) -> Callable:
    """PIL image -> float CHW tensor, normalised with ``mean``/``std`` or (``normalize=False``)
    in [0, 1]."""
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    if train:
        geometry = [v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip()]
    else:
        resize_size = resize_size or default_resize_size(image_size)
        if resize_size < image_size:
            raise ValueError(f"resize_size={resize_size} must be >= image_size={image_size}")
        geometry = [v2.Resize(resize_size, antialias=True), v2.CenterCrop(image_size)]
    steps = [*geometry, v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    if normalize:
        steps.append(v2.Normalize(mean=list(mean), std=list(std)))
    return v2.Compose(steps)
