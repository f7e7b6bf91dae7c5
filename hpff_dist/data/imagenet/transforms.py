"""The paper's ImageNet transforms (torchvision), and the guard that keeps normalisation out of
the data side.

Train: RandomResizedCrop(image_size) + horizontal flip. Val: resize the shorter side to
``resize_size`` (256 for 224) + centre crop. Images come out as float in [0, 1] and are never
normalised here: the model's data preprocessor (``ClassifierDataPreprocessor``) is the one place
that normalises, so InfoPro's decoders can reconstruct the raw image and a second normalisation
cannot be configured. Every ImageNet data constructor refuses ``normalize``/``mean``/``std``
with a message that says where normalisation lives.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch
from torchvision.transforms import v2

from hpff_dist.registry import TRANSFORMS

#: The ImageNet statistics for the model's ``data_preprocessor`` (``configs/_base_/models/
#: imagenet_*.py``); the data side never applies them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Arguments that would normalise on the data side; refused by every ImageNet data constructor.
NORMALISATION_ARGS = ("normalize", "mean", "std")

_F = TypeVar("_F", bound=Callable[..., Any])


def reject_normalisation(where: str, kwargs: Mapping[str, Any]) -> None:
    """Raise ``TypeError`` if ``kwargs`` asks ``where`` to normalise: the model's data
    preprocessor is the only place that does, so data-side normalisation would be the second."""
    given = [name for name in NORMALISATION_ARGS if name in kwargs]
    if given:
        raise TypeError(
            f"{where} got {', '.join(repr(n) for n in given)}, but ImageNet data is never "
            "normalised on the data side: loaders yield images in [0, 1] and the model's data "
            "preprocessor (model.data_preprocessor = dict(mean=..., std=...), "
            "ClassifierDataPreprocessor) is the one place that normalises, so it cannot happen "
            "twice. Remove the argument; to get normalised images outside a model, pass the "
            "batch through that data preprocessor."
        )


def rejects_normalisation(function: _F) -> _F:
    """Decorate a data constructor so that ``normalize=``/``mean=``/``std=`` fail with
    :func:`reject_normalisation`'s message instead of Python's bare "unexpected keyword"."""

    @functools.wraps(function)
    def checked(*args: Any, **kwargs: Any) -> Any:
        reject_normalisation(function.__qualname__.removesuffix(".__init__"), kwargs)
        return function(*args, **kwargs)

    return checked  # type: ignore[return-value]


def default_resize_size(image_size: int) -> int:
    """256 for 224: the paper's val resize, scaled with the crop for small test images."""
    return int(round(image_size * 256 / 224))


@TRANSFORMS.register_module(name="ImageNetTransform")
@rejects_normalisation
def build_imagenet_transform(
    train: bool, image_size: int = 224, resize_size: int | None = None
) -> Callable:
    """PIL image -> float CHW tensor in [0, 1] (the model's data preprocessor normalises)."""
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    if train:
        geometry = [v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip()]
    else:
        resize_size = resize_size or default_resize_size(image_size)
        if resize_size < image_size:
            raise ValueError(f"resize_size={resize_size} must be >= image_size={image_size}")
        geometry = [v2.Resize(resize_size, antialias=True), v2.CenterCrop(image_size)]
    return v2.Compose([*geometry, v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
