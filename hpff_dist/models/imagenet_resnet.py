"""ImageNet ResNets and ResNeXts from torchvision, seen as ``stem -> blocks -> head``.

The backbone is torchvision's own definition (``torchvision.models.get_model(arch,
weights=None)``), never rewritten: we only regroup its modules so that local learning can cut it
between blocks (``hpff_dist.local.network.BlockNetwork``):

* ``stem``  = conv1 + bn1 + relu + maxpool,
* ``blocks`` = layer1..layer4 flattened, block ``(stage, index)`` = ``layer{stage}[index]`` (the
  coordinates of the reference split tables),
* ``head``  = avgpool + flatten + fc.

The forward pass is torchvision's, operation for operation, so logits are identical. Parameter
names change (``conv1.weight`` -> ``stem.conv1.weight``, ``layer3.5.conv1.weight`` ->
``blocks.12.conv1.weight``); :func:`from_torchvision_state_dict` maps a torchvision checkpoint.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping

import torchvision
from torch import Tensor, nn
from torchvision.models import ResNet

from hpff_dist.local.features import FeatureInfo
from hpff_dist.models.block_network import StagedBlockNetwork
from hpff_dist.registry import MODELS

#: The paper's ImageNet nets; any other torchvision ResNet/ResNeXt/Wide-ResNet name works too.
PAPER_ARCHS = ("resnet101", "resnet152", "resnext101_32x8d")
_STAGES = ("layer1", "layer2", "layer3", "layer4")


def _block_out_channels(block: nn.Module) -> int:
    """Output width of a torchvision Bottleneck (bn3) or BasicBlock (bn2)."""
    last_bn = block.bn3 if hasattr(block, "bn3") else block.bn2
    return int(last_bn.num_features)


def _stride(layer: nn.Module) -> int:
    stride = layer.stride
    return int(stride[0] if isinstance(stride, tuple) else stride)


@MODELS.register_module()
class TorchvisionResNet(StagedBlockNetwork):
    """A torchvision ResNet/ResNeXt regrouped as a ``BlockNetwork``.

    Args:
        arch: torchvision model name (``resnet101``, ``resnet152``, ``resnext101_32x8d``, ...).
        num_classes: classifier outputs.
        zero_init_residual: zero the last BN of every residual branch (torchvision's option;
            each block starts as the identity). The reference trains with it off.
    """

    def __init__(
        self, arch: str = "resnet101", num_classes: int = 1000, zero_init_residual: bool = False
    ) -> None:
        super().__init__()
        try:
            builder = torchvision.models.get_model_builder(arch)
        except ValueError as error:
            raise ValueError(f"unknown torchvision model {arch!r}: {error}") from error
        if builder.__module__ != ResNet.__module__:
            raise TypeError(f"{arch!r} is not a torchvision ResNet/ResNeXt ({builder.__module__})")
        model = builder(
            weights=None, num_classes=num_classes, zero_init_residual=zero_init_residual
        )
        self._adopt(model, arch)

    @classmethod
    def from_torchvision(cls, model: ResNet, arch: str = "custom") -> TorchvisionResNet:
        """Wrap an existing torchvision ResNet (its modules are shared, not copied)."""
        net = cls.__new__(cls)
        nn.Module.__init__(net)
        net._adopt(model, arch)
        return net

    def _adopt(self, model: nn.Module, arch: str) -> None:
        if not isinstance(model, ResNet):
            raise TypeError(f"{arch!r} is a {type(model).__name__}, not a torchvision ResNet")
        self.arch = arch
        self.stem = nn.Sequential(
            OrderedDict(conv1=model.conv1, bn1=model.bn1, relu=model.relu, maxpool=model.maxpool)
        )
        stages = [getattr(model, name) for name in _STAGES]
        self.stage_depths = tuple(len(stage) for stage in stages)
        self.blocks = nn.ModuleList(block for stage in stages for block in stage)
        self.head = nn.Sequential(
            OrderedDict(avgpool=model.avgpool, flatten=nn.Flatten(1), fc=model.fc)
        )
        # The stem reduces 4x (stride-2 conv, stride-2 max pool); a block reduces by its
        # stride (torchvision keeps it on the block; dilated stages have stride 1).
        info, reduction = [], _stride(model.conv1) * _stride(model.maxpool)
        for block in self.blocks:
            reduction *= int(block.stride)
            info.append(FeatureInfo(_block_out_channels(block), reduction))
        self._feature_info = info

    def extra_repr(self) -> str:
        return f"arch={self.arch}, stage_depths={self.stage_depths}"


def from_torchvision_state_dict(
    state_dict: Mapping[str, Tensor], stage_depths: tuple[int, ...]
) -> dict[str, Tensor]:
    """Rename a torchvision ResNet state dict to :class:`TorchvisionResNet`'s names.

    Lets a user start from torchvision weights they already have (we never download any).
    """
    offsets = [sum(stage_depths[:s]) for s in range(len(stage_depths))]
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if match := re.fullmatch(r"layer(\d)\.(\d+)\.(.+)", key):
            stage, index, rest = int(match[1]), int(match[2]), match[3]
            out[f"blocks.{offsets[stage - 1] + index}.{rest}"] = value
        elif key.startswith(("conv1.", "bn1.")):
            out[f"stem.{key}"] = value
        elif key.startswith("fc."):
            out[f"head.{key}"] = value
        else:
            raise KeyError(f"unexpected key {key!r} in a torchvision ResNet state dict")
    return out


def resnet101(**kwargs) -> TorchvisionResNet:
    return TorchvisionResNet("resnet101", **kwargs)


def resnet152(**kwargs) -> TorchvisionResNet:
    return TorchvisionResNet("resnet152", **kwargs)


def resnext101_32x8d(**kwargs) -> TorchvisionResNet:
    return TorchvisionResNet("resnext101_32x8d", **kwargs)


__all__ = [
    "PAPER_ARCHS",
    "TorchvisionResNet",
    "from_torchvision_state_dict",
    "resnet101",
    "resnet152",
    "resnext101_32x8d",
]
