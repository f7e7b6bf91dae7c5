"""Shared base of our backbones: ``stem -> blocks -> head`` with (stage, index) block ids.

Backbones set ``stem``, ``blocks``, ``head``, ``stage_depths`` and ``_feature_info`` (one
``FeatureInfo`` per block: width, reduction, layout); this class answers the rest of
``hpff_dist.local.network.BlockNetwork`` the same way for all of them.
"""

from __future__ import annotations

from torch import Tensor, nn

from hpff_dist.local.features import FeatureInfo
from hpff_dist.local.network import block_id_table


class StagedBlocks:
    """The ``BlockNetwork`` answers of stages of residual blocks, run stem -> blocks -> head.

    A plain mixin: ``StagedBlockNetwork`` is it as an ``nn.Module`` (backbones we own); views
    over modules owned elsewhere (``segmentation.resnet_blocks``) use it directly."""

    stem: nn.Module
    blocks: nn.ModuleList
    head: nn.Module
    stage_depths: tuple[int, ...]
    _feature_info: list[FeatureInfo]

    @property
    def block_ids(self) -> list[tuple[int, int]]:
        return block_id_table(self.stage_depths)

    @property
    def feature_info(self) -> list[FeatureInfo]:
        return list(self._feature_info)

    @property
    def block_channels(self) -> list[int]:
        return [f.channels for f in self._feature_info]

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.forward_features(x))


class StagedBlockNetwork(StagedBlocks, nn.Module):
    """Base for our backbones made of stages of residual blocks (an ``nn.Module``)."""
