"""Light InfoPro heads for large images (ImageNet-style), after the reference's ImageNet heads.

The CIFAR heads (``ReconstructionHead``, ``ClassifierAuxHead``) work at the feature's full
width: the reference decoder upsamples e.g. 1024 channels to 224x224 before its first conv
(our ``ReconstructionHead`` fuses that pair and mixes channels at the feature's resolution,
which removes the wide full-resolution tensor), and the ``1c2f`` classifier runs a 3x3 conv at
1024 channels. Computed plainly, at 224 that cost more activation memory than the backbone
saves by training locally. These heads, the shapes of the reference's ImageNet heads, shrink the
width first:

* ``ProgressiveReconstructionHead``: 1x1 conv to ``width`` channels at the feature's own
  resolution, then x2 upsampling stages whose widths halve towards the image, so the tensors at
  full resolution are narrow.
* ``BottleneckAuxHead``: 1x1 reduce, two stride-2 3x3 convs, 1x1 expand, pool, linear.

Both speak the ``LocalHead`` interface and the attributes the PFF wrappers use (``net``,
``criterion``, ``loss_mode`` for the classifier; ``forward(feature, targets, image)`` for the
decoder), so ``PatchFusedClassifier`` / ``PatchwiseReconstruction`` wrap them unchanged.
"""

from __future__ import annotations

import math
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from hpff_dist.local.heads import LOCAL_LOSSES, ClassifierHeadBase, HeadOutput, LocalHead
from hpff_dist.local.registry import HEADS, HeadContext

Size = tuple[int, int]


def _pair(size: int | tuple[int, int]) -> Size:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def upsampling_steps(feature_size: int | tuple[int, int], image_size: int | tuple[int, int]) -> int:
    """Upsampling steps from feature to image: ``ceil(log2(ratio))`` on the larger ratio.

    All steps but the last are exact x2; the last interpolates to the image size, so a
    non-power-of-two ratio (7 -> 200: 7, 14, 28, 56, 112, 200) needs no special case.
    """
    (fh, fw), (ih, iw) = _pair(feature_size), _pair(image_size)
    if min(fh, fw, ih, iw) < 1:
        raise ValueError(f"sizes must be positive, got feature {feature_size}, image {image_size}")
    ratio = max(ih / fh, iw / fw)
    return max(0, math.ceil(math.log2(ratio) - 1e-9))


def _conv_bn_relu(cin: int, cout: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    ]


@HEADS.register()
class ProgressiveReconstructionHead(LocalHead):
    """Decoder: 1x1 reduce, x2 upsample + conv-BN-ReLU stages, last upsample to size, conv, BCE.

    The number of upsampling steps is fixed at construction from ``feature_size`` and
    ``image_size`` (``upsampling_steps``); at run time the last step interpolates to whatever
    image size it is given, so PFF patches of uneven size work with the same weights.
    Hidden widths halve towards the image: the stage just before the last upsampling has
    ``min_width`` channels, each earlier one twice that, capped at ``width`` (for 14 -> 224:
    128 -> 64 -> 32 -> 16 -> 3, as in the reference). ``widen`` scales both widths. Like
    ``ReconstructionHead`` it returns logits and uses BCE-with-logits against the [0, 1] image.
    """

    requires = frozenset({"image"})

    @classmethod
    def from_config(cls, ctx: HeadContext, **kwargs: Any) -> ProgressiveReconstructionHead:
        """The upsampling stages follow from the declared feature size at ``image_size``."""
        if ctx.image_size is None:
            raise ValueError(
                "ProgressiveReconstructionHead needs image_size (model.image_size) to count its "
                "upsampling stages"
            )
        size = ctx.feature_size()
        return cls(ctx.feature.channels, size, ctx.image_size, ctx.image_channels, **kwargs)

    def __init__(
        self,
        in_channels: int,
        feature_size: int | tuple[int, int],
        image_size: int | tuple[int, int],
        image_channels: int = 3,
        width: int = 128,
        min_width: int = 16,
        widen: float = 1.0,
    ) -> None:
        super().__init__()
        if width < 1 or min_width < 1:
            raise ValueError(f"decoder widths must be >= 1, got {width}, {min_width}")
        self.steps = upsampling_steps(feature_size, image_size)
        top = max(1, int(width * widen))
        low = min(top, max(1, int(min_width * widen)))
        self.reduce = nn.Sequential(*_conv_bn_relu(in_channels, top, 1))
        stages: list[nn.Module] = []
        channels = top
        for s in range(1, self.steps):
            out = min(top, low << (self.steps - 1 - s))
            stages.append(nn.Sequential(*_conv_bn_relu(channels, out, 3)))
            channels = out
        self.stages = nn.ModuleList(stages)
        self.out = nn.Conv2d(channels, image_channels, 3, 1, 1)

    def reconstruct_logits(self, feature: Tensor, size: Size) -> Tensor:
        x = self.reduce(feature)
        for stage in self.stages:
            x = stage(F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True))
        if tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
        return self.out(x)

    def forward(self, feature: Tensor, targets: Tensor, image: Tensor | None = None) -> HeadOutput:
        if image is None:
            raise ValueError("a reconstruction head needs the restored input image")
        logits = self.reconstruct_logits(feature, tuple(image.shape[-2:]))
        return HeadOutput(F.binary_cross_entropy_with_logits(logits, image))


def bottleneck_widths(in_channels: int, widen: float = 1.0) -> tuple[int, int, int]:
    """(reduce, mid, wide) widths of ``BottleneckAuxHead`` for an input width.

    Rule: reduce ``r = min(c, max(128, c // 4))``, then ``max(r, min(2r, 256))`` and twice
    that. It gives the reference's ImageNet heads (256/512/1024/2048 in -> 128-256-512,
    128-256-512, 256-256-512, 512-512-1024) and never widens a narrow (CIFAR) feature at the
    1x1 reduce. ``widen`` scales all three.
    """
    r = min(in_channels, max(128, in_channels // 4))
    mid = max(r, min(2 * r, 256))
    return tuple(max(1, int(w * widen)) for w in (r, mid, 2 * mid))  # type: ignore[return-value]


@HEADS.register()
class BottleneckAuxHead(ClassifierHeadBase):
    """Aux classifier: 1x1 reduce, 3x3 stride 2, 3x3 stride 2, 1x1 expand, pool, linear.

    Cheap on large maps: the 3x3 convs run on the reduced width and at 1/2 and 1/4 of the
    feature's resolution. ``widths`` = (reduce, mid, wide) defaults to ``bottleneck_widths``;
    the 1x1 expand goes to ``expand`` channels (the reference: 2048). Output is ``num_classes``
    logits with cross entropy, or with ``loss='contrast'`` a ``feature_dim`` embedding with the
    supervised contrastive loss (as ``ClassifierAuxHead``).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int = 10,
        loss: str = "cross_entropy",
        widths: tuple[int, int, int] | None = None,
        expand: int = 2048,
        widen: float = 1.0,
        feature_dim: int = 128,
        temperature: float = 0.07,
    ) -> None:
        super().__init__()
        if loss not in LOCAL_LOSSES:
            raise ValueError(f"local loss must be one of {LOCAL_LOSSES}, got {loss!r}")
        reduce, mid, wide = widths if widths is not None else bottleneck_widths(in_channels, widen)
        self.loss_mode = loss
        self.temperature = temperature
        out_dim = feature_dim if loss == "contrast" else num_classes
        self.net = nn.Sequential(
            *_conv_bn_relu(in_channels, reduce, 1),
            *_conv_bn_relu(reduce, mid, 3, 2),
            *_conv_bn_relu(mid, wide, 3, 2),
            *_conv_bn_relu(wide, expand, 1),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(expand, out_dim),
        )
