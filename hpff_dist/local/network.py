"""The one thing the local-learning core needs from a backbone: an ordered list of blocks.

Local learning cuts a network between residual blocks, so every backbone we train locally
(CIFAR ResNets, torchvision ResNets/ResNeXts, ViT, DeepLab) is exposed as
``stem -> blocks[0] -> ... -> blocks[n-1] -> head``. Blocks are addressed by (stage, index),
the reference split tables' coordinates (stages are 1-based, indices 0-based within a stage).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor, nn

from hpff_dist.local.features import FeatureInfo


@runtime_checkable
class BlockNetwork(Protocol):
    """A network seen as ``stem`` + ``blocks`` + ``head``.

    ``stem``: image -> first feature map. ``blocks``: ``nn.ModuleList`` run in order.
    ``block_ids``: one ``(stage, index)`` per block. ``feature_info``: what each block emits
    (``FeatureInfo``: channels, reduction, layout), declared so heads are built for it without
    running the network; ``block_channels`` = their widths. ``head``: last feature -> logits
    (the network's real classifier, which HiLo also uses as the last module's head).
    """

    stem: nn.Module
    blocks: nn.ModuleList
    head: nn.Module

    @property
    def block_ids(self) -> list[tuple[int, int]]: ...

    @property
    def feature_info(self) -> list[FeatureInfo]: ...

    @property
    def block_channels(self) -> list[int]: ...

    def forward(self, x: Tensor) -> Tensor: ...


def block_id_table(stage_depths: list[int] | tuple[int, ...]) -> list[tuple[int, int]]:
    """(stage, index) of every block for a net with the given blocks per stage (stages 1-based)."""
    return [(stage + 1, i) for stage, depth in enumerate(stage_depths) for i in range(depth)]


def feature_info_of(net: BlockNetwork) -> list[FeatureInfo]:
    """The declared ``FeatureInfo`` of every block, checked against ``blocks``."""
    info = getattr(net, "feature_info", None)
    if info is None:
        raise TypeError(
            f"{type(net).__name__} declares no feature_info: a BlockNetwork lists one "
            "hpff_dist.local.features.FeatureInfo(channels, reduction, layout) per block"
        )
    info = list(info)
    if len(info) != len(net.blocks):
        raise ValueError(
            f"{type(net).__name__}.feature_info has {len(info)} entries for {len(net.blocks)} blocks"
        )
    return info
