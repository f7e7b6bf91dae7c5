"""Dense (segmentation) local heads: per-pixel logits, cross entropy with ``ignore_index=255``.

* ``SegClassifierHead``: InfoPro's segmentation classifier (its mmseg fork's ``head_inter``):
  3x3 conv-BN-ReLU, Dropout2d(0.1), 1x1 conv to the classes.
* ``DGLSegHead``: a DGL-style auxiliary segmentation head, shaped like mmseg's ``FCNHead``:
  ``num_convs`` (2) 3x3 conv-BN-ReLU, Dropout2d(0.1), 1x1 conv to the classes.
* ``InfoProSegHead``: InfoPro's segmentation local loss, ``ixx * reconstruction + ixy *
  segmentation`` with InfoPro's Cityscapes weights 1.5 (reconstruction) and 1 (task), kept
  constant over modules unless ``ixx_2``/``ixy_2`` ask for the classification head's linear
  schedule; ``n > 1`` wraps both parts in PFF (``hpff_dist.local.dense_pff``).

Logits are made at the feature's resolution and upsampled bilinearly to the label map's size
(``align_corners=False``, mmseg's convention; InfoPro's fork used True, a config option).
Targets are (N, H, W) label maps (or mmseg's (N, 1, H, W)). ``dense_levels`` writes the
explicit levels that give the classification methods (dgl, infopro, dgl_hpff, infopro_hpff)
their segmentation form.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

import hpff_dist.local.dense_pff  # noqa: F401  (registers PatchFusedDense for n > 1)
from hpff_dist.local.dense import (
    IGNORE_INDEX,
    as_label_map,
    labelled_pixels,
    pixel_ce_sum,
    upsample_logits,
)
from hpff_dist.local.heads import HeadOutput, InfoProHead, LocalHead
from hpff_dist.local.registry import HEADS, HeadContext


class DenseHeadBase(LocalHead):
    """A head whose ``net`` maps a feature to per-pixel logits at the feature's resolution;
    the loss is their mean cross entropy at label resolution over labelled pixels.
    ``PatchFusedDense`` wraps these (it uses ``pixel_logits`` and ``ignore_index``)."""

    net: nn.Module
    ignore_index: int = IGNORE_INDEX
    align_corners: bool = False

    @classmethod
    def from_config(cls, ctx: HeadContext, **kwargs: Any) -> DenseHeadBase:
        """Input width and number of classes from the module; the rest from the config."""
        return cls(ctx.feature.channels, num_classes=ctx.num_classes, **kwargs)

    def pixel_logits(self, feature: Tensor, size: tuple[int, int]) -> Tensor:
        """(N, classes, *size) logits: ``net`` at the feature's size, upsampled bilinearly."""
        return upsample_logits(self.net(feature), size, self.align_corners)

    def forward(self, feature: Tensor, targets: Tensor, image: Tensor | None = None) -> HeadOutput:
        labels = as_label_map(targets)
        logits = self.pixel_logits(feature, tuple(labels.shape[-2:]))
        loss = pixel_ce_sum(logits, labels, self.ignore_index)
        return HeadOutput(loss / labelled_pixels(labels, self.ignore_index), logits)


class ConvSegHead(DenseHeadBase):
    """``num_convs`` 3x3 conv-BN-ReLU at ``width``, optional Dropout2d, 1x1 conv to classes.

    ``num_convs=0`` is a per-pixel linear probe (1x1 conv on the feature itself)."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        width: int,
        num_convs: int,
        dropout: float = 0.1,
        ignore_index: int = IGNORE_INDEX,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        if num_convs < 0 or width < 1:
            raise ValueError(f"need num_convs >= 0 and width >= 1, got {num_convs}, {width}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.ignore_index = ignore_index
        self.align_corners = align_corners
        layers: list[nn.Module] = []
        channels = in_channels
        for _ in range(num_convs):
            layers += [nn.Conv2d(channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width)]
            layers.append(nn.ReLU(inplace=True))
            channels = width
        if dropout > 0:
            layers.append(nn.Dropout2d(dropout))
        layers.append(nn.Conv2d(channels, num_classes, 1))
        self.net = nn.Sequential(*layers)


@HEADS.register()
class SegClassifierHead(ConvSegHead):
    """InfoPro's segmentation classifier: 3x3 conv-BN-ReLU, Dropout2d(0.1), 1x1 conv.

    ``width`` defaults to ``min(512, max(16, c // 2))``: InfoPro's 1024 -> 512. Config:
    ``dict(type='SegClassifierHead', width=None, num_convs=1, dropout=0.1, ignore_index=255,
    align_corners=False)``."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int = 19,
        width: int | None = None,
        num_convs: int = 1,
        dropout: float = 0.1,
        ignore_index: int = IGNORE_INDEX,
        align_corners: bool = False,
    ) -> None:
        width = width if width is not None else min(512, max(16, in_channels // 2))
        super().__init__(
            in_channels, num_classes, width, num_convs, dropout, ignore_index, align_corners
        )


@HEADS.register()
class DGLSegHead(ConvSegHead):
    """DGL-style auxiliary segmentation head, ``FCNHead``-shaped: ``num_convs`` (2) 3x3
    conv-BN-ReLU at ``width`` (default ``min(256, c)``, mmseg's auxiliary FCNHead width),
    Dropout2d(0.1), 1x1 conv. Stride 1 throughout: the logits stay dense. Config:
    ``dict(type='DGLSegHead', width=None, num_convs=2, dropout=0.1, ignore_index=255,
    align_corners=False)``."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int = 19,
        width: int | None = None,
        num_convs: int = 2,
        dropout: float = 0.1,
        ignore_index: int = IGNORE_INDEX,
        align_corners: bool = False,
    ) -> None:
        width = width if width is not None else min(256, in_channels)
        super().__init__(
            in_channels, num_classes, width, num_convs, dropout, ignore_index, align_corners
        )


#: InfoPro's Cityscapes weights (``info_pro_param=dict(loss_recons=1.5, loss_task=1)``).
INFOPRO_SEG_IXX, INFOPRO_SEG_IXY = 1.5, 1.0


@HEADS.register()
class InfoProSegHead(InfoProHead):
    """InfoPro for segmentation: ``ixx * reconstruction + ixy * per-pixel cross entropy``.

    Defaults: the decoder is ``ReconstructionHead`` (BCE against the [0, 1] image at its
    resolution, as InfoPro's segmentation and classification codes do), the classifier
    ``SegClassifierHead``; weights 1.5 and 1 at every module (InfoPro trained Cityscapes with
    K=2, one local module, so its code has no schedule; ``ixx_2``/``ixy_2`` switch on the
    classification head's linear schedule ``lambda_schedule``). ``n > 1``: PFF on both parts,
    the decoder through ``DensePatchwiseReconstruction`` with ``patch_loss`` (default
    ``'mean'``: the reconstruction keeps its unpatched per-pixel scale, so 1.5 : 1 keeps its
    meaning) and the classifier through ``PatchFusedDense``. Config: ``dict(type=
    'InfoProSegHead', reconstruction=None, classifier=None, ixx_1=1.5, ixy_1=1.0, ixx_2=None,
    ixy_2=None, n=1, patch_loss='mean')``.
    """

    @classmethod
    def from_config(  # type: ignore[override]
        cls,
        ctx: HeadContext,
        reconstruction: dict | None = None,
        classifier: dict | None = None,
        ixx_1: float = INFOPRO_SEG_IXX,
        ixy_1: float = INFOPRO_SEG_IXY,
        ixx_2: float | None = None,
        ixy_2: float | None = None,
        n: int = 1,
        patch_loss: str = "mean",
    ) -> InfoProSegHead | None:
        reconstruction = reconstruction or dict(type="ReconstructionHead")
        classifier = classifier or dict(type="SegClassifierHead")
        if n > 1:
            reconstruction = dict(
                type="DensePatchwiseReconstruction", n=n, patch_loss=patch_loss, head=reconstruction
            )
            classifier = dict(type="PatchFusedDense", n=n, head=classifier)
        return super().from_config(
            ctx,
            reconstruction=reconstruction,
            classifier=classifier,
            ixx_1=ixx_1,
            ixy_1=ixy_1,
            ixx_2=ixx_1 if ixx_2 is None else ixx_2,
            ixy_2=ixy_1 if ixy_2 is None else ixy_2,
        )


DENSE_METHODS = ("dgl", "infopro", "dgl_hpff", "infopro_hpff")


def dense_levels(
    method: str,
    n: int = 2,
    w_ind: float = 0.001,
    w_cas: float = 0.999,
    dgl_head: dict | None = None,
    infopro_head: dict | None = None,
) -> list[dict[str, Any]]:
    """The explicit levels of a classification method's segmentation form.

    ``dgl``/``infopro``: one independent level (weight 1, module 0 included) with
    ``DGLSegHead``/``InfoProSegHead``. ``*_hpff``: HiLo as the reference presets do it,
    independent ``DGLSegHead`` (``w_ind``) and cascade ``DGLSegHead`` (dgl_hpff) or
    ``InfoProSegHead`` (infopro_hpff) (``w_cas``), module 0 learning through cascade 1 only,
    PFF with ``n`` x ``n`` patches on both levels (``n=1``: none). The last module always
    trains through the task's head. Use as ``dict(method=method, k=K, levels=dense_levels(
    method))``.
    """
    if method not in DENSE_METHODS:
        raise ValueError(f"dense methods are {DENSE_METHODS}, got {method!r}")
    dgl = dict(dgl_head or dict(type="DGLSegHead"))
    infopro = dict(infopro_head or dict(type="InfoProSegHead"))
    if not method.endswith("_hpff"):
        head = dgl if method == "dgl" else infopro
        return [dict(name="ind", span=1, weight=1.0, head=head)]
    if n > 1:
        dgl = dict(type="PatchFusedDense", n=n, head=dgl)
        if infopro.get("type") == "InfoProSegHead":
            infopro.setdefault("n", n)
    cas = dgl if method == "dgl_hpff" else infopro
    return [
        dict(name="ind", span=1, weight=w_ind, head=dgl, first_module=False),
        dict(name="cas", span=2, weight=w_cas, head=cas, first_module=False),
    ]
