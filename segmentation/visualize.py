"""Pictures of segmentation results: colour-coded label maps beside their images.

Colours come from the dataset's ``palette`` (mmseg's metainfo: Cityscapes' official colours);
ignored pixels (255) are black. Pure numpy + PIL so a tool or a hook can call it anywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

IGNORE_INDEX = 255


def colorize(labels: np.ndarray, palette: Sequence[Sequence[int]]) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 RGB; ``IGNORE_INDEX`` and ids past the palette are
    black."""
    table = np.zeros((256, 3), np.uint8)
    colours = np.asarray(palette, np.uint8).reshape(-1, 3)[:IGNORE_INDEX]
    table[: len(colours)] = colours
    return table[np.asarray(labels, np.int64).clip(0, 255)]


def side_by_side(panels: Sequence[np.ndarray], gap: int = 4) -> np.ndarray:
    """(H, W, 3) uint8 panels of one height in a row, ``gap`` white pixels apart."""
    height = max(p.shape[0] for p in panels)
    out = []
    for index, panel in enumerate(panels):
        if panel.ndim == 2:
            panel = np.repeat(panel[..., None], 3, axis=2)
        if panel.shape[0] != height:
            pad = np.full((height - panel.shape[0], *panel.shape[1:]), 255, np.uint8)
            panel = np.concatenate([panel, pad])
        out.append(panel.astype(np.uint8))
        if index + 1 < len(panels):
            out.append(np.full((height, gap, 3), 255, np.uint8))
    return np.concatenate(out, axis=1)


def save_prediction(
    path: str | Path,
    image_rgb: np.ndarray,
    prediction: np.ndarray,
    palette: Sequence[Sequence[int]],
    ground_truth: np.ndarray | None = None,
) -> Path:
    """Write image | ground truth (when given) | prediction as one PNG; returns the path."""
    panels = [image_rgb]
    if ground_truth is not None:
        panels.append(colorize(ground_truth, palette))
    panels.append(colorize(prediction, palette))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(side_by_side(panels)).save(path)
    return path


def save_grid(path: str | Path, rows: Sequence[np.ndarray], gap: int = 4) -> Path:
    """Stack ``side_by_side`` rows (same width) vertically into one PNG."""
    width = max(r.shape[1] for r in rows)
    out = []
    for index, row in enumerate(rows):
        if row.shape[1] != width:
            pad = np.full((row.shape[0], width - row.shape[1], 3), 255, np.uint8)
            row = np.concatenate([row, pad], axis=1)
        out.append(row)
        if index + 1 < len(rows):
            out.append(np.full((gap, width, 3), 255, np.uint8))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(out)).save(path)
    return path
