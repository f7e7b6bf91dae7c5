"""CIFAR ResNets (He et al. 2016, section 4.2): 3 stages of basic blocks, widths 16-32-64.

ResNet-32 has 5 blocks per stage, ResNet-110 18. The net is exposed as stem + flat block list
+ head (``hpff_dist.local.network.BlockNetwork``) so that split plans can cut it anywhere.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from hpff_dist.local.features import FeatureInfo
from hpff_dist.models.block_network import StagedBlockNetwork


class BasicBlock(nn.Module):
    """3x3-3x3 residual block; a 1x1 projection shortcut when shape changes."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ClassifierHead(nn.Module):
    """Global average pool + linear: the network's own classifier."""

    def __init__(self, in_ch: int, num_classes: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.pool(x), 1))


class CifarResNet(StagedBlockNetwork):
    """Stem (3x3 conv, BN, ReLU) + 3 stages of ``BasicBlock`` + pooled linear head."""

    def __init__(
        self,
        depth: int = 32,
        num_classes: int = 10,
        in_channels: int = 3,
        widths: tuple[int, int, int, int] = (16, 16, 32, 64),
    ) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (e.g. 20, 32, 56, 110), got {depth}")
        n = (depth - 2) // 6
        self.depth = depth
        self.stage_depths = (n, n, n)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        blocks: list[nn.Module] = []
        info: list[FeatureInfo] = []
        in_ch, reduction = widths[0], 1
        for stage, out_ch in enumerate(widths[1:]):
            for i in range(n):
                stride = 2 if (stage > 0 and i == 0) else 1
                reduction *= stride
                blocks.append(BasicBlock(in_ch, out_ch, stride))
                info.append(FeatureInfo(out_ch, reduction))
                in_ch = out_ch
        self.blocks = nn.ModuleList(blocks)
        self._feature_info = info
        self.head = ClassifierHead(in_ch, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # He-normal fan-out init as in the reference ResNets; BN starts as identity.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


def resnet32(**kwargs) -> CifarResNet:
    return CifarResNet(depth=32, **kwargs)


def resnet110(**kwargs) -> CifarResNet:
    return CifarResNet(depth=110, **kwargs)
