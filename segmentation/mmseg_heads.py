"""mmseg decode heads as the local-learning core sees them: a head on one feature, its loss.

mmseg's heads read a tuple of stage outputs (``in_index`` picks one) and score logits with
their own ``loss_decode`` modules (``CrossEntropyLoss``: its ``loss_weight``, ``avg_non_ignore``,
class weights) after resizing them to the labels. The core hands a head one feature and
(N, H, W) label maps, so these adapters put the feature where ``in_index`` reads it and apply
the head's own losses exactly as ``BaseDecodeHead.loss_by_feat`` does. They hold the mmseg
head without registering it: it belongs to the segmentor (``decode_head``,
``auxiliary_head``), under mmseg's parameter names.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from hpff_dist.local.dense import as_label_map
from hpff_dist.local.heads import HeadOutput, LocalHead


def _check_single_input(head: nn.Module, role: str) -> int:
    transform = getattr(head, "input_transform", None)
    if transform is not None:
        raise ValueError(
            f"{type(head).__name__} as the {role} reads several stages (input_transform="
            f"{transform!r}); local learning gives a head one module output: use a head with "
            "input_transform=None and an integer in_index"
        )
    return int(head.in_index)


class DecodeHeadOnFeature(nn.Module):
    """``head(feature)``: an mmseg decode head's logits (at the feature's resolution) for one
    feature, passed in the position its ``in_index`` reads."""

    def __init__(self, head: nn.Module, role: str = "decode head") -> None:
        super().__init__()
        object.__setattr__(self, "_head", head)
        self.in_index = _check_single_input(head, role)

    @property
    def head(self) -> nn.Module:
        return self._head

    def forward(self, feature: Tensor) -> Tensor:
        inputs = [feature] * (self.in_index + 1)
        return self._head(inputs)


class DecodeHeadLoss:
    """The head's training loss for logits and label maps, as ``loss_by_feat`` computes it:
    logits resized bilinearly to the labels (the head's ``align_corners``), the head's sampler
    if any, the sum of its ``loss_decode`` terms with its ``ignore_index``."""

    def __init__(self, head: nn.Module) -> None:
        self.head = head

    def __call__(self, logits: Tensor, targets: Any) -> Tensor:
        labels = as_label_map(targets)
        head = self.head
        logits = F.interpolate(
            logits, size=labels.shape[-2:], mode="bilinear", align_corners=head.align_corners
        )
        weight = None
        if head.sampler is not None:
            weight = head.sampler.sample(logits, labels[:, None])
        losses = (
            head.loss_decode if isinstance(head.loss_decode, nn.ModuleList) else [head.loss_decode]
        )
        total: Tensor | float = 0.0
        for loss in losses:
            total = total + loss(logits, labels, weight=weight, ignore_index=head.ignore_index)
        return total


class MMSegAuxHead(LocalHead):
    """An mmseg auxiliary head (``FCNHead``) as a tap's head: its logits on the tapped block's
    output and its own weighted loss (``loss_decode.loss_weight``, 0.4 in mmseg's configs)."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "_forward", DecodeHeadOnFeature(head, "auxiliary head"))
        object.__setattr__(self, "_loss", DecodeHeadLoss(head))

    def forward(self, feature: Tensor, targets: Tensor, image: Tensor | None = None) -> HeadOutput:
        logits = self._forward(feature)
        return HeadOutput(self._loss(logits, targets), logits)
