"""mmseg's ResNet (``ResNetV1c``, D8) seen as ``stem -> blocks -> head`` for local learning.

The backbone stays mmseg's own module, built by mmseg's registry and run by mmseg's
``EncoderDecoder`` at inference; this view only regroups it so the local-learning core can cut
it between residual blocks (``hpff_dist.local.network.BlockNetwork``):

* ``stem``   = the deep stem (three 3x3 convs) + max pool,
* ``blocks`` = ``layer1..layer4`` flattened, block ``(stage, index)`` = ``layer{stage}[index]``,
  the coordinates of the ResNet-101 split tables (``hpff_dist.local.split``),
* ``head``   = the decode head (ASPP) on the last block's output.

The view holds its parts without registering them (``object.__setattr__``): they belong to the
segmentor, so parameter names stay mmseg's (``backbone.layer3.5.conv1.weight``) and an mmseg
checkpoint loads as it is.
"""

from __future__ import annotations

from torch import Tensor, nn

from hpff_dist.local.features import FeatureInfo
from hpff_dist.models.block_network import StagedBlocks


def _block_stride(block: nn.Module) -> int:
    stride = getattr(block, "stride", 1)
    return int(stride[0] if isinstance(stride, tuple) else stride)


def _block_channels(block: nn.Module) -> int:
    conv = block.conv3 if hasattr(block, "conv3") else block.conv2
    return int(conv.out_channels)


class MMSegResNetBlocks(StagedBlocks):
    """A ``BlockNetwork`` over an mmseg ``ResNet``/``ResNetV1c``/``ResNetV1d`` and a head.

    Not an ``nn.Module``: it owns nothing (see the module docstring). ``head`` maps the last
    block's output to logits at the feature's resolution (``DecodeHeadOnFeature``).
    """

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        for attr in ("res_layers", "maxpool"):
            if not hasattr(backbone, attr):
                raise TypeError(
                    f"{type(backbone).__name__} is not an mmseg ResNet (no {attr!r}); "
                    "LocalEncoderDecoder trains mmseg.ResNet / ResNetV1c / ResNetV1d backbones"
                )
        if getattr(backbone, "plugins", None):
            raise ValueError("mmseg ResNet plugins are not supported by the block view")
        if getattr(backbone, "deep_stem", False):
            stem = nn.Sequential(backbone.stem, backbone.maxpool)
        else:
            stem = nn.Sequential(backbone.conv1, backbone.norm1, backbone.relu, backbone.maxpool)
        stages = [getattr(backbone, name) for name in backbone.res_layers]
        self.stage_depths = tuple(len(stage) for stage in stages)
        self.stem = stem
        self.blocks = nn.ModuleList(block for stage in stages for block in stage)
        self.head = head
        # The stem reduces 4x (stride-2 conv, stride-2 max pool); a block by its stride
        # (1 in the dilated stages of D8).
        info, reduction = [], 4
        for block in self.blocks:
            reduction *= _block_stride(block)
            info.append(FeatureInfo(_block_channels(block), reduction))
        self._feature_info = info
        ends, total = [], 0
        for depth in self.stage_depths:
            total += depth
            ends.append(total - 1)
        self.stage_ends = tuple(ends)  # block index where each stage ends

    def __call__(self, x: Tensor) -> Tensor:
        return self.forward(x)
