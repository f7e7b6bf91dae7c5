"""Vision Transformers from torchvision, seen as ``stem -> blocks -> head``.

The network is torchvision's ``VisionTransformer`` (the definition behind ``vit_b_16``, built
with ``weights=None``), never rewritten: its modules are regrouped so local learning can cut it
between encoder blocks (``hpff_dist.local.network.BlockNetwork``):

* ``stem``  = ``conv_proj`` patch embedding -> tokens, class token prepended, position
  embedding added, dropout (torchvision's ``_process_input`` + the first lines of ``Encoder``),
* ``blocks`` = ``encoder.layers`` (block ``(1, i)`` = ``encoder_layer_i``),
* ``head``  = ``encoder.ln`` + the class token + ``heads``.

Each block emits ``(N, 1 + (H/p)(W/p), hidden_dim)`` tokens, declared as ``FeatureInfo(hidden_dim,
patch_size, 'NLC', prefix_tokens=1)`` so token heads and PFF on the token grid are built for it.
The forward pass is torchvision's operation for operation, so logits are identical. torchvision
is chosen over timm because it is already a pinned dependency and its ViT has no hidden
defaults (no fused attention switch, no layer scale) that would need pinning too.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torchvision.models.vision_transformer import VisionTransformer

from hpff_dist.local.features import FeatureInfo
from hpff_dist.models.block_network import StagedBlockNetwork
from hpff_dist.registry import MODELS


class ViTStem(nn.Module):
    """Image -> tokens: torchvision's patch embedding, class token and position embedding.

    Holds the torchvision model's own ``conv_proj``, ``class_token`` and ``pos_embedding``
    (shared, not copied) and repeats its operations in its order."""

    def __init__(self, model: VisionTransformer) -> None:
        super().__init__()
        self.conv_proj = model.conv_proj
        self.class_token = model.class_token
        self.pos_embedding = model.encoder.pos_embedding
        self.dropout = model.encoder.dropout
        self.image_size = model.image_size
        self.patch_size = model.patch_size
        self.hidden_dim = model.hidden_dim

    def forward(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        if h != self.image_size or w != self.image_size:
            raise ValueError(f"expected {self.image_size}x{self.image_size} images, got {h}x{w}")
        p = self.patch_size
        x = self.conv_proj(x)
        x = x.reshape(n, self.hidden_dim, (h // p) * (w // p)).permute(0, 2, 1)
        x = torch.cat([self.class_token.expand(n, -1, -1), x], dim=1)
        return self.dropout(x + self.pos_embedding)


class ViTHead(nn.Module):
    """Tokens -> logits: final LayerNorm over all tokens, then the class token's classifier
    (torchvision normalises every token before taking the first; we keep its order)."""

    def __init__(self, model: VisionTransformer) -> None:
        super().__init__()
        self.ln = model.encoder.ln
        self.heads = model.heads

    def forward(self, x: Tensor) -> Tensor:
        return self.heads(self.ln(x)[:, 0])


@MODELS.register_module()
class TorchvisionViT(StagedBlockNetwork):
    """torchvision's ``VisionTransformer`` regrouped as a ``BlockNetwork``.

    Defaults are ViT-B/16 (``torchvision.models.vit_b_16``: 224 px, patch 16, 12 layers,
    12 heads, width 768, MLP 3072). A small ViT for 32x32 images is ``image_size=32,
    patch_size=4`` with fewer/narrower layers. ``in_channels`` replaces the 3-channel patch
    embedding (e.g. 1 for Fashion-MNIST), initialised as torchvision initialises its own.
    """

    def __init__(
        self,
        image_size: int = 224,
        patch_size: int = 16,
        num_layers: int = 12,
        num_heads: int = 12,
        hidden_dim: int = 768,
        mlp_dim: int = 3072,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        num_classes: int = 1000,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(
                f"image_size {image_size} is not divisible by patch_size {patch_size} "
                "(model.backbone.image_size / patch_size)"
            )
        model = VisionTransformer(
            image_size=image_size,
            patch_size=patch_size,
            num_layers=num_layers,
            num_heads=num_heads,
            hidden_dim=hidden_dim,
            mlp_dim=mlp_dim,
            dropout=dropout,
            attention_dropout=attention_dropout,
            num_classes=num_classes,
        )
        if in_channels != 3:
            model.conv_proj = nn.Conv2d(in_channels, hidden_dim, patch_size, patch_size)
            fan_in = in_channels * patch_size * patch_size
            nn.init.trunc_normal_(model.conv_proj.weight, std=math.sqrt(1 / fan_in))
            nn.init.zeros_(model.conv_proj.bias)
        self._adopt(model)

    @classmethod
    def from_torchvision(cls, model: VisionTransformer) -> TorchvisionViT:
        """Wrap an existing torchvision ViT (its modules are shared, not copied)."""
        net = cls.__new__(cls)
        nn.Module.__init__(net)
        net._adopt(model)
        return net

    def _adopt(self, model: nn.Module) -> None:
        if not isinstance(model, VisionTransformer):
            raise TypeError(f"{type(model).__name__} is not a torchvision VisionTransformer")
        if not isinstance(model.conv_proj, nn.Conv2d):
            raise TypeError("a ViT with a convolutional stem (conv_stem_configs) is not supported")
        self.stem = ViTStem(model)
        self.blocks = nn.ModuleList(model.encoder.layers)
        self.head = ViTHead(model)
        self.stage_depths = (len(self.blocks),)
        info = FeatureInfo(model.hidden_dim, model.patch_size, "NLC", prefix_tokens=1)
        self._feature_info = [info] * len(self.blocks)

    def extra_repr(self) -> str:
        s = self.stem
        return f"image_size={s.image_size}, patch_size={s.patch_size}, blocks={len(self.blocks)}"


_RENAMES = (
    (r"conv_proj\.(.+)", r"stem.conv_proj.\1"),
    (r"class_token", r"stem.class_token"),
    (r"encoder\.pos_embedding", r"stem.pos_embedding"),
    (r"encoder\.layers\.encoder_layer_(\d+)\.(.+)", r"blocks.\1.\2"),
    (r"encoder\.ln\.(.+)", r"head.ln.\1"),
    (r"heads\.(.+)", r"head.heads.\1"),
)


def from_torchvision_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename a torchvision ViT state dict to :class:`TorchvisionViT`'s names (for weights a
    user already has; nothing is downloaded)."""
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        for pattern, repl in _RENAMES:
            if re.fullmatch(pattern, key):
                out[re.sub(pattern, repl, key)] = value
                break
        else:
            raise KeyError(f"unexpected key {key!r} in a torchvision ViT state dict")
    return out


__all__ = ["TorchvisionViT", "ViTHead", "ViTStem", "from_torchvision_state_dict"]
