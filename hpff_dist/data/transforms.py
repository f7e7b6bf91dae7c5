"""Image transforms for the classification datasets, built from configs.

We use torchvision's ``transforms.v2`` as its authors intend and only register the classes
under our ``TRANSFORMS`` registry, so a config writes ``dict(type='RandomCrop', size=32)``.
Pipelines end in float tensors in [0, 1]: normalisation happens in the model's data
preprocessor, which also hands the un-normalised image to InfoPro's reconstruction heads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torchvision.transforms import v2

from hpff_dist.registry import TRANSFORMS

_TORCHVISION_TRANSFORMS = (
    "Pad",
    "RandomCrop",
    "RandomResizedCrop",
    "RandomHorizontalFlip",
    "Resize",
    "CenterCrop",
    "Grayscale",
    "ToImage",
)
for _name in _TORCHVISION_TRANSFORMS:
    TRANSFORMS.register_module(name=_name, module=getattr(v2, _name))


@TRANSFORMS.register_module()
class ToFloatImage(v2.ToDtype):
    """uint8 image tensor -> float32 in [0, 1] (``ToDtype`` with ``scale=True``)."""

    def __init__(self) -> None:
        super().__init__(torch.float32, scale=True)


def build_pipeline(pipeline: Sequence[dict | Callable] | None) -> Callable:
    """A config list of transform dicts -> one callable (``v2.Compose``)."""
    steps = [TRANSFORMS.build(t) if isinstance(t, dict) else t for t in (pipeline or [])]
    return v2.Compose(steps) if steps else (lambda x: x)
