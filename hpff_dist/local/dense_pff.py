"""PFF for dense (per-pixel) heads: each patch's logits cover its own pixels.

The paper averages the aux net's patch-level outputs before the loss; that is defined for a
head with one output per image. A per-pixel head has one output per pixel, and its loss is a
sum over pixels, so the natural reading (ours) is: the feature is cut into n x n patches, the
*same* head runs on each, patch p's logits are upsampled to the pixels of label patch p (cut at
the feature's boundaries scaled to the label size, ``hpff_dist.local.dense``) and scored there.
The loss is

    sum_p (sum of pixel CE in patch p) / (labelled pixels of the whole map)

which is the mean over pixels of the stitched logit map: the all-at-once per-pixel mean, with
no re-weighting of small or mostly-ignored patches. Because it is a plain sum over patches,
``accumulate`` forwards and backpropagates one patch at a time (gradients accumulate in the
head's parameters and the feature leaf) and only one patch's graph is alive: the head's
activation memory falls by about n^2, with the same gradients.

``DensePatchwiseReconstruction`` is the decoder counterpart for dense tasks: as
``PatchwiseReconstruction``, but the image is cut at the feature's scaled boundaries too, so
feature patch p always reconstructs the image pixels label patch p covers (the plain one cuts
the image on its own, which differs when n does not divide the feature's side).
"""

from __future__ import annotations

import torch
from torch import Tensor

from hpff_dist.local.backward import Backward
from hpff_dist.local.dense import (
    as_label_map,
    labelled_pixels,
    pixel_ce_sum,
    split_like_feature,
)
from hpff_dist.local.features import split_patches
from hpff_dist.local.heads import HeadOutput, LocalHead
from hpff_dist.local.pff import PatchwiseReconstruction, _check_n
from hpff_dist.local.registry import HEADS, HeadContext

_DENSE_ATTRS = ("pixel_logits", "ignore_index")


@HEADS.register()
class PatchFusedDense(LocalHead):
    """Paper PFF around a per-pixel head, one patch in flight (see the module docstring).

    ``inner`` needs ``pixel_logits(feature, size)`` (logits at ``size``) and ``ignore_index``
    (``hpff_dist.local.dense_heads.DenseHeadBase``). ``forward`` returns the stitched logit
    map at label size; ``accumulate`` returns no logits (keeping a full-resolution map of a
    step that only needs the loss would cost what PFF saves). Config:
    ``dict(type='PatchFusedDense', n=2, head=<dense head cfg>)``.
    """

    @classmethod
    def from_config(cls, ctx: HeadContext, head: dict, n: int = 2) -> PatchFusedDense:
        _check_n(n, ctx)
        return cls(HEADS.build(head, ctx), n)

    def __init__(self, inner: LocalHead, n: int = 2) -> None:
        super().__init__()
        missing = [a for a in _DENSE_ATTRS if not hasattr(inner, a)]
        if missing:
            raise TypeError(
                f"PatchFusedDense needs a per-pixel head with {_DENSE_ATTRS}; "
                f"{type(inner).__name__} lacks {missing}"
            )
        if n < 1:
            raise ValueError(f"PFF n must be >= 1, got {n}")
        self.inner = inner
        self.n = n

    def _pairs(
        self, feature: Tensor, targets: Tensor
    ) -> tuple[list[tuple[Tensor, Tensor]], Tensor]:
        """(feature patch, label patch) pairs and the whole map's labelled-pixel count."""
        labels = as_label_map(targets)
        patches = split_patches(feature, self.n)
        label_patches = split_like_feature(labels, tuple(feature.shape[-2:]), self.n)
        return list(zip(patches, label_patches)), labelled_pixels(labels, self.inner.ignore_index)

    def _patch_loss_sum(self, patch: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.inner.pixel_logits(patch, tuple(labels.shape[-2:]))
        return pixel_ce_sum(logits, labels, self.inner.ignore_index), logits

    def forward(self, feature: Tensor, targets: Tensor, image: Tensor | None = None) -> HeadOutput:
        """All patches in one graph: the reference computation ``accumulate`` must equal."""
        pairs, count = self._pairs(feature, targets)
        total: Tensor | float = 0.0
        logits = []
        for patch, labels in pairs:
            loss_sum, patch_logits = self._patch_loss_sum(patch, labels)
            total = total + loss_sum
            logits.append(patch_logits)
        n = self.n
        rows = [torch.cat(logits[i * n : (i + 1) * n], dim=-1) for i in range(n)]
        return HeadOutput(total / count, torch.cat(rows, dim=-2))

    def accumulate(
        self,
        feature: Tensor,
        targets: Tensor,
        image: Tensor | None,
        weight: float,
        backward: Backward,
    ) -> HeadOutput:
        pairs, count = self._pairs(feature, targets)
        total = feature.new_zeros(())
        for patch, labels in pairs:
            loss = self._patch_loss_sum(patch, labels)[0] / count
            backward(loss * weight)
            total = total + loss.detach()
        return HeadOutput(total)


@HEADS.register()
class DensePatchwiseReconstruction(PatchwiseReconstruction):
    """``PatchwiseReconstruction`` whose image patches are cut at the feature's boundaries
    scaled to the image (the rule label patches follow). Config: ``dict(type=
    'DensePatchwiseReconstruction', n=2, patch_loss='mean', head=<decoder cfg>)``."""

    layouts = ("NCHW",)  # cuts the image like a map; token groups: PatchwiseReconstruction

    def _pairs(self, feature: Tensor, image: Tensor | None) -> list[tuple[Tensor, Tensor]]:
        if image is None:
            raise ValueError("a reconstruction head needs the restored input image")
        size = tuple(feature.shape[-2:])
        return list(zip(split_patches(feature, self.n), split_like_feature(image, size, self.n)))
