"""What a backbone block emits, declared instead of discovered (cf. timm's ``feature_info``).

Heads and PFF need a block output's width, layout and spatial size before any batch exists:
an aux head is built for it, PFF cuts it into patches, a progressive decoder counts its
upsampling stages from it. Backbones declare one ``FeatureInfo`` per block; heads state the
layouts they accept and are refused, with both named, on any other.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

LAYOUTS = ("NCHW", "NLC")


@dataclass(frozen=True)
class FeatureInfo:
    """One block's output: ``channels``; ``reduction`` = input pixels per feature cell (per
    side); ``layout`` ``'NCHW'`` (feature map) or ``'NLC'`` (tokens: ``prefix_tokens`` such as
    a class token, then a row-major grid of image_size / reduction cells)."""

    channels: int
    reduction: int
    layout: str = "NCHW"
    prefix_tokens: int = 0

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"feature layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.channels < 1 or self.reduction < 1:
            raise ValueError(f"channels and reduction must be >= 1, got {self}")
        if self.prefix_tokens and self.layout != "NLC":
            raise ValueError("prefix_tokens only apply to the 'NLC' token layout")

    def spatial_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """(H, W) of the feature map or token grid for an input of ``image_size``."""
        h, w = image_size
        r = self.reduction
        return -(-h // r), -(-w // r)  # ceil: a strided conv with padding keeps the remainder


def check_layout(owner: str, accepted: tuple[str, ...], feature: FeatureInfo) -> None:
    """Refuse a feature layout ``owner`` cannot take, naming both."""
    if feature.layout not in accepted:
        raise ValueError(
            f"{owner} accepts {'/'.join(accepted)} features, but this block emits "
            f"{feature.layout} ({feature.channels} channels, reduction {feature.reduction}); "
            f"choose a head for {feature.layout} features"
        )


def split_patches(x: Tensor, n: int, layout: str = "NCHW", prefix_tokens: int = 0) -> list[Tensor]:
    """n x n spatial patches, row-major, of an NCHW map (views) or of an NLC token grid.

    Tokens (``layout='NLC'``): the ``prefix_tokens`` are dropped (they belong to no patch) and the grid tokens
    are regrouped into n x n groups, each returned as (N, tokens of the group, C). Uneven
    sizes when the grid side is not divisible by n.
    """
    if layout == "NCHW":
        if x.dim() != 4:
            raise ValueError(f"NCHW patches need a 4-d tensor, got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if n < 1 or n > h or n > w:
            raise ValueError(
                f"cannot cut a {h}x{w} map into {n}x{n} patches: lower model.method.pff.n"
            )
        rows = torch.tensor_split(x, n, dim=-2)
        return [p for row in rows for p in torch.tensor_split(row, n, dim=-1)]
    if layout != "NLC":
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if x.dim() != 3:
        raise ValueError(f"NLC patches need a 3-d (N, L, C) tensor, got shape {tuple(x.shape)}")
    grid = x[:, prefix_tokens:, :]
    side = int(round(grid.shape[1] ** 0.5))
    if side * side != grid.shape[1]:
        raise ValueError(
            f"{grid.shape[1]} grid tokens (after {prefix_tokens} prefix tokens) do not "
            "form a square grid"
        )
    if n < 1 or n > side:
        raise ValueError(
            f"cannot cut a {side}x{side} token grid into {n}x{n} patches: lower model.method.pff.n"
        )
    cells = grid.reshape(grid.shape[0], side, side, grid.shape[2])
    rows = torch.tensor_split(cells, n, dim=1)
    return [
        p.reshape(p.shape[0], -1, p.shape[3])
        for row in rows
        for p in torch.tensor_split(row, n, dim=2)
    ]
