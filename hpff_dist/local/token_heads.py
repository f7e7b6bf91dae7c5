"""Aux heads for token features (``NLC``: ViT blocks), the token counterparts of DGL / InfoPro.

A ViT block emits ``(N, prefix + h*w, C)``: ``prefix`` tokens (the class token) then a
row-major ``h x w`` grid of patch tokens. These heads read the **grid tokens only**:

* ``TokenClassifierHead`` (DGL): LayerNorm per token, mean over the grid tokens, then an MLP
  of one or two linear layers (GELU between, as in the ViT's own MLP). Mean-pooling rather
  than the class token, because (a) a PFF group of the grid carries no class token, and the
  same head must run on a group and on the whole grid; (b) before the last blocks the class
  token has gathered little (it starts as one learned vector shared by every image), while
  the grid tokens carry the image at every depth. The class token is still trained: through
  attention it shapes every grid token the head reads, and the last module trains it directly
  through the network's classifier.
* ``TokenReconstructionHead`` (InfoPro's decoder): the grid tokens laid out as the
  ``(N, C, h, w)`` map they came from, then any registered map decoder (default
  ``ReconstructionHead``, InfoPro's CIFAR decoder) reconstructs the image. Combined with a
  classifier by ``InfoProHead``, which applies InfoPro's lambda schedule unchanged.

Both accept a whole block output (prefix tokens dropped) or a PFF group of grid tokens
``(N, L_group, C)`` (``split_patches`` already dropped the prefix). The classifier's ``net``
sees grid tokens only, so ``PatchFusedClassifier`` runs it on groups as it runs CNN heads on
map patches; the decoder takes the group's grid shape from the image patch it reconstructs
(``PatchwiseReconstruction`` cuts the image at the token boundaries, ``reduction`` pixels per
token), so no shape travels beside the tokens.
"""

from __future__ import annotations

import re
from typing import Any

from torch import Tensor, nn

from hpff_dist.local.features import FeatureInfo
from hpff_dist.local.heads import LOCAL_LOSSES, ClassifierHeadBase, HeadOutput, LocalHead
from hpff_dist.local.registry import HEADS, HeadContext

#: ``aux_net`` shorthand of the token classifier: ``'token1f'``, ``'token2f'``.
TOKEN_AUX_NETS = ("token1f", "token2f")


def parse_token_aux_net(config: str) -> int | None:
    """``'token2f'`` -> 2 (linear layers); None when ``config`` is not a token head name."""
    match = re.fullmatch(r"token(\d)f", config)
    if match is None:
        return None
    fcs = int(match.group(1))
    if fcs not in (1, 2):
        raise ValueError(f"token aux net {config!r}: one or two linear layers, {TOKEN_AUX_NETS}")
    return fcs


def tokens_to_map(
    tokens: Tensor, grid: tuple[int, int], prefix_tokens: int = 0, owner: str = "token head"
) -> Tensor:
    """``(N, [prefix +] h*w, C)`` -> ``(N, C, h, w)`` map of the grid tokens (a view).

    Prefix tokens are dropped when present: a whole block output has them, a PFF group not."""
    rows, cols = grid
    extra = tokens.shape[1] - rows * cols
    if tokens.dim() != 3 or extra not in (0, prefix_tokens):
        raise ValueError(
            f"{owner}: {tuple(tokens.shape)} tokens do not form a {rows}x{cols} grid "
            f"(with 0 or {prefix_tokens} prefix tokens)"
        )
    grid_tokens = tokens[:, extra:]
    n, _, c = grid_tokens.shape
    return grid_tokens.reshape(n, rows, cols, c).permute(0, 3, 1, 2)


class GridMean(nn.Module):
    """Mean over the token axis: ``(N, L, C)`` -> ``(N, C)``."""

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=1)


@HEADS.register()
class TokenClassifierHead(ClassifierHeadBase):
    """DGL-style token head: LayerNorm, mean over grid tokens, ``fcs`` linear layers (1 or 2).

    Hidden width ``feature_dim * widen`` (as ``ClassifierAuxHead``); ``loss='contrast'`` makes
    the output a ``feature_dim`` embedding for the supervised contrastive loss. ``net`` maps
    grid tokens (no prefix) to outputs; ``forward`` drops the prefix tokens first. Config:
    ``dict(type='TokenClassifierHead', fcs=2, feature_dim=..., loss=..., widen=...)``.
    """

    layouts = ("NLC",)

    @classmethod
    def from_config(cls, ctx: HeadContext, **kwargs: Any) -> TokenClassifierHead:
        return cls(
            ctx.feature.channels,
            num_classes=ctx.num_classes,
            prefix_tokens=ctx.feature.prefix_tokens,
            **kwargs,
        )

    def __init__(
        self,
        in_channels: int,
        fcs: int = 2,
        num_classes: int = 10,
        prefix_tokens: int = 0,
        loss: str = "cross_entropy",
        widen: float = 1.0,
        feature_dim: int = 128,
        temperature: float = 0.07,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if loss not in LOCAL_LOSSES:
            raise ValueError(f"local loss must be one of {LOCAL_LOSSES}, got {loss!r}")
        if fcs not in (1, 2):
            raise ValueError(f"TokenClassifierHead takes fcs=1 or 2, got {fcs}")
        self.prefix_tokens = prefix_tokens
        self.loss_mode = loss
        self.temperature = temperature
        out_dim = feature_dim if loss == "contrast" else num_classes
        layers: list[nn.Module] = [nn.LayerNorm(in_channels, eps=eps), GridMean()]
        if fcs == 2:
            hidden = max(1, int(feature_dim * widen))
            layers += [nn.Linear(in_channels, hidden), nn.GELU(), nn.Linear(hidden, out_dim)]
        else:
            layers.append(nn.Linear(in_channels, out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, feature: Tensor, targets: Tensor, image: Tensor | None = None) -> HeadOutput:
        outputs = self.net(feature[:, self.prefix_tokens :])
        logits = outputs if self.loss_mode == "cross_entropy" else None
        return HeadOutput(self.criterion(outputs, targets), logits)


@HEADS.register()
class TokenReconstructionHead(LocalHead):
    """InfoPro-style token decoder: grid tokens -> ``(N, C, H/p, W/p)`` map -> map decoder.

    ``head``: the registry config of the map decoder, built for the map this head makes
    (``NCHW``, same width and reduction; default ``ReconstructionHead``). The grid is
    ``image size / reduction``, so the same head serves a whole block output and a PFF group
    with its image patch. Config: ``dict(type='TokenReconstructionHead', head=<decoder cfg>)``.
    """

    layouts = ("NLC",)
    requires = frozenset({"image"})

    @classmethod
    def from_config(cls, ctx: HeadContext, head: dict | None = None) -> TokenReconstructionHead:
        feature = ctx.feature
        map_ctx = HeadContext(
            feature=FeatureInfo(feature.channels, feature.reduction, "NCHW"),
            module_index=ctx.module_index,
            k=ctx.k,
            num_classes=ctx.num_classes,
            image_channels=ctx.image_channels,
            image_size=ctx.image_size,
        )
        inner = HEADS.build(head or dict(type="ReconstructionHead"), map_ctx)
        return cls(inner, feature.reduction, feature.prefix_tokens)

    def __init__(self, decoder: LocalHead, reduction: int, prefix_tokens: int = 0) -> None:
        super().__init__()
        self.decoder = decoder
        self.reduction = reduction
        self.prefix_tokens = prefix_tokens

    def forward(self, feature: Tensor, targets: Tensor, image: Tensor | None = None) -> HeadOutput:
        if image is None:
            raise ValueError("a reconstruction head needs the restored input image")
        h, w = image.shape[-2:]
        r = self.reduction
        if h % r or w % r:
            raise ValueError(
                f"TokenReconstructionHead: a {h}x{w} image is not a whole number of "
                f"{r}x{r} token cells"
            )
        grid = tokens_to_map(feature, (h // r, w // r), self.prefix_tokens, type(self).__name__)
        return self.decoder(grid, targets, image)


__all__ = [
    "TOKEN_AUX_NETS",
    "GridMean",
    "TokenClassifierHead",
    "TokenReconstructionHead",
    "parse_token_aux_net",
    "tokens_to_map",
]
