"""Per-pixel targets for dense (segmentation) heads: label maps, their loss, their patches.

A dense head predicts logits at its feature's resolution; they are upsampled bilinearly to the
label map's size and scored with cross entropy that skips ``ignore_index`` (255, Cityscapes'
"void"). Everything here works on the *sum* of per-pixel losses and on the count of labelled
pixels separately, because that is what makes a loss over patches add up exactly to the loss
over the whole map (``hpff_dist.local.dense_pff``).

Patch boundaries: a feature map is cut like ``split_patches`` (``torch.tensor_split``: the first
``h % n`` parts get one extra row). A target at another resolution (the label map, the image)
is cut at the *same* boundaries scaled to its size, ``b * H // h`` (floor): exact integer
boundaries when ``h`` divides ``H`` (D8 features of a 512x1024 crop: 64x128 -> every label
patch is exactly 8x its feature patch), and a deterministic rule when it does not (e.g. a
97-row feature of a 769-row image), so label patches still tile the map without overlap.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = 255


def as_label_map(targets: Tensor) -> Tensor:
    """(N, H, W) long labels from (N, H, W) or mmseg's (N, 1, H, W); anything else refused."""
    if targets.dim() == 4 and targets.shape[1] == 1:
        targets = targets[:, 0]
    if targets.dim() != 3:
        raise ValueError(
            f"a dense head needs (N, H, W) label maps, got targets of shape {tuple(targets.shape)}"
        )
    return targets.long()


def upsample_logits(logits: Tensor, size: tuple[int, int], align_corners: bool = False) -> Tensor:
    """Bilinear resize of (N, classes, h, w) logits to ``size`` (a no-op at that size)."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=align_corners)


def pixel_ce_sum(logits: Tensor, labels: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Sum of per-pixel cross entropy over labelled pixels (logits already at label size)."""
    return F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="sum")


def labelled_pixels(labels: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Number of pixels not ``ignore_index``, at least 1 (a tensor: no device sync).

    At least 1 so that an all-ignored batch gives loss 0 and zero gradients instead of
    ``F.cross_entropy``'s NaN."""
    return (labels != ignore_index).sum().clamp_min(1)


def seg_cross_entropy(
    logits: Tensor,
    targets: Tensor,
    ignore_index: int = IGNORE_INDEX,
    align_corners: bool = False,
) -> Tensor:
    """Mean per-pixel cross entropy of logits upsampled to the label size (the task loss).

    Equals ``F.cross_entropy(upsampled, labels, ignore_index=...)`` whenever a pixel is
    labelled; 0 (not NaN) when none is."""
    labels = as_label_map(targets)
    up = upsample_logits(logits, tuple(labels.shape[-2:]), align_corners)
    return pixel_ce_sum(up, labels, ignore_index) / labelled_pixels(labels, ignore_index)


def patch_bounds(size: int, n: int) -> list[int]:
    """Boundaries of ``torch.tensor_split`` of ``size`` into ``n`` parts: [0, ..., size]."""
    base, extra = divmod(size, n)
    bounds = [0]
    for i in range(n):
        bounds.append(bounds[-1] + base + (1 if i < extra else 0))
    return bounds


def scaled_bounds(size: int, n: int, target_size: int) -> list[int]:
    """The feature's patch boundaries (``size`` cut in ``n``) mapped to ``target_size``:
    ``b * target_size // size``."""
    return [b * target_size // size for b in patch_bounds(size, n)]


def split_like_feature(x: Tensor, feature_size: tuple[int, int], n: int) -> list[Tensor]:
    """n x n patches (row-major views) of ``x``'s last two dims, cut where the feature's
    patches are cut, scaled to ``x``'s size (labels (N, H, W) or images (N, C, H, W))."""
    (h, w), (th, tw) = feature_size, x.shape[-2:]
    rows, cols = scaled_bounds(h, n, th), scaled_bounds(w, n, tw)
    if any(a == b for a, b in zip(rows, rows[1:])) or any(a == b for a, b in zip(cols, cols[1:])):
        raise ValueError(
            f"cannot cut a {th}x{tw} target like a {h}x{w} feature into {n}x{n} patches: a "
            "patch would be empty (is the target smaller than the feature?)"
        )
    return [
        x[..., rows[i] : rows[i + 1], cols[j] : cols[j + 1]] for i in range(n) for j in range(n)
    ]
