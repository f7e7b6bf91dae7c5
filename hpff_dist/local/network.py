"""The one thing the local-learning core needs from a backbone: an ordered list of blocks.

Local learning cuts a network between residual blocks, so every backbone we train locally
(CIFAR ResNets, torchvision ResNets/ResNeXts, ViT, DeepLab) is exposed as
``stem -> blocks[0] -> ... -> blocks[n-1] -> head``. Blocks are addressed by (stage, index),
the reference split tables' coordinates (stages are 1-based, indices 0-based within a stage).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor, nn


@runtime_checkable
class BlockNetwork(Protocol):
    """A network seen as ``stem`` + ``blocks`` + ``head``.

    ``stem``: image -> first feature map. ``blocks``: ``nn.ModuleList`` run in order.
    ``block_ids``: one ``(stage, index)`` per block. ``block_channels``: output width of each
    block (aux heads are built for it). ``head``: last feature map -> logits (the network's
    real classifier, which HiLo also uses as the last module's head).
    """

    stem: nn.Module
    blocks: nn.ModuleList
    head: nn.Module

    @property
    def block_ids(self) -> list[tuple[int, int]]: ...

    @property
    def block_channels(self) -> list[int]: ...

    def forward(self, x: Tensor) -> Tensor: ...


def block_id_table(stage_depths: list[int] | tuple[int, ...]) -> list[tuple[int, int]]:
    """(stage, index) of every block for a net with the given blocks per stage (stages 1-based)."""
    return [(stage + 1, i) for stage, depth in enumerate(stage_depths) for i in range(depth)]
