"""A tiny Cityscapes tree in the official layout, written as real PNGs (and one polygons
JSON): shared by the dataset, conversion, segmentation training and evaluation tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

W, H = 64, 32

# The official table (cityscapesscripts/helpers/labels.py), labelId: trainId, by hand; every
# other id 0-33 is a void class (trainId 255).
TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
             24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}  # fmt: skip
# (split, city, stem, annotation kind)
SAMPLES = [
    ("train", "aachen", "aachen_000000_000019", "labelIds"),
    ("train", "aachen", "aachen_000001_000019", "labelIds"),
    ("train", "bremen", "bremen_000000_000019", "polygons"),
    ("val", "frankfurt", "frankfurt_000000_000019", "labelIds"),
]


def hand_train_ids(ids: np.ndarray) -> np.ndarray:
    return np.vectorize(lambda v: TRAIN_IDS.get(int(v), 255))(ids).astype(np.uint8)


def polygons_annotation() -> dict:
    """Road rectangle over unlabeled background, a 'cargroup' (drawn as car) over part of it,
    a license plate (id -1: never drawn) and a deleted sky polygon."""
    objects = [
        {"label": "road", "polygon": [[8, 4], [23, 4], [23, 11], [8, 11]]},
        {"label": "cargroup", "polygon": [[20, 8], [40, 8], [40, 20], [20, 20]]},
        {"label": "license plate", "polygon": [[0, 0], [63, 0], [63, 31], [0, 31]]},
        {"label": "sky", "polygon": [[0, 0], [63, 0], [63, 31], [0, 31]], "deleted": 1},
    ]
    return {"imgWidth": W, "imgHeight": H, "objects": objects}


def polygons_train_ids() -> np.ndarray:
    """What the annotation above must give: PIL fills polygons including their edges."""
    expected = np.full((H, W), 255, np.uint8)
    expected[4:12, 8:24] = 0  # road
    expected[8:21, 20:41] = 13  # car (cargroup)
    return expected


def write_tree(root: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """Images and annotations in the official layout; returns each stem's expected trainIds."""
    rng = np.random.default_rng(seed)
    expected = {}
    for split, city, stem, kind in SAMPLES:
        images = root / "leftImg8bit" / split / city
        labels = root / "gtFine" / split / city
        images.mkdir(parents=True, exist_ok=True)
        labels.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"{stem}_leftImg8bit.png")
        if kind == "labelIds":
            ids = rng.integers(0, 34, (H, W), dtype=np.uint8)  # every labelId, voids included
            Image.fromarray(ids).save(labels / f"{stem}_gtFine_labelIds.png")
            expected[stem] = hand_train_ids(ids)
        else:
            (labels / f"{stem}_gtFine_polygons.json").write_text(json.dumps(polygons_annotation()))
            expected[stem] = polygons_train_ids()
    return expected
