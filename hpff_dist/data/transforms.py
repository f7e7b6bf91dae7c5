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
    "RandAugment",
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


@TRANSFORMS.register_module()
class DownsampleImage(torch.nn.Module):
    """Shrink a float CHW image to ``size`` x ``size`` without aliasing (testing a model on
    larger images than it was trained on, e.g. STL-10's 96x96 for a CIFAR-10 network).

    ``filter='area'``: each output pixel is the mean of the input pixels it covers (for an
    integer factor such as 96 -> 32, its 3x3 block; ``torch`` ``interpolate(mode='area')``);
    ``'bilinear'``: triangle filter widened by the factor (``antialias=True``, PIL's resize).
    """

    FILTERS = ("area", "bilinear")

    def __init__(self, size: int, filter: str = "area") -> None:
        super().__init__()
        if filter not in self.FILTERS:
            raise ValueError(
                f"DownsampleImage filter must be one of {self.FILTERS}, got {filter!r}"
            )
        if not isinstance(size, int) or size <= 0:
            raise ValueError(f"DownsampleImage size must be a positive int, got {size!r}")
        self.size, self.filter = size, filter

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if not image.is_floating_point():
            raise TypeError(
                f"DownsampleImage needs a float image (got {image.dtype}): put it after "
                "dict(type='ToFloatImage') in the pipeline"
            )
        if min(image.shape[-2:]) < self.size:
            raise ValueError(
                f"DownsampleImage({self.size}) only shrinks; the image is {tuple(image.shape)}"
            )
        batch = image.unsqueeze(0) if image.dim() == 3 else image
        if self.filter == "area":
            out = torch.nn.functional.interpolate(batch, size=(self.size, self.size), mode="area")
        else:
            out = torch.nn.functional.interpolate(
                batch, size=(self.size, self.size), mode="bilinear", antialias=True
            )
        return out.squeeze(0) if image.dim() == 3 else out


def build_pipeline(pipeline: Sequence[dict | Callable] | None) -> Callable:
    """A config list of transform dicts -> one callable (``v2.Compose``)."""
    steps = [TRANSFORMS.build(t) if isinstance(t, dict) else t for t in (pipeline or [])]
    return v2.Compose(steps) if steps else (lambda x: x)
