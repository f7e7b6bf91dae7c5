"""Fashion-MNIST segmentation canvases (the ``make train-seg`` data): deterministic per index,
labels as an independent painting of the same layout gives them, and the shipped config's
pipeline feeding ``LocalEncoderDecoder``'s train step and the prediction picture."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmengine.optim import OptimWrapper
from mmengine.registry import init_default_scope
from PIL import Image

import segmentation  # noqa: F401  (registers LocalEncoderDecoder)
from hpff_dist.data.fashion_mnist import DEBIAN_ROOT, read_idx
from hpff_dist.data.fmnist_segmentation import CLASSES, PALETTE, FashionMNISTSegmentation
from hpff_dist.data.sample_seeds import SeededIndex, sample_seed
from hpff_dist.engine.config import load_config, set_data_root
from hpff_dist.engine.resolve import resolve_config
from hpff_dist.registry import DATASETS, MODELS
from segmentation.hooks import SegPredictionGrid

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "fashion_mnist_seg"
HPFF = CONFIGS / "deeplabv3_r18_d8_k4_infopro_hpff.py"

pytestmark = pytest.mark.skipif(
    not Path(DEBIAN_ROOT, "t10k-images-idx3-ubyte.gz").exists(),
    reason="Debian's dataset-fashion-mnist is not installed (make deps installs it)",
)


@pytest.fixture(scope="module")
def val() -> FashionMNISTSegmentation:
    return FashionMNISTSegmentation(split="val", num_canvases=20)


def _tiny(cfg: Config, method: dict) -> torch.nn.Module:
    """The config's model at 1/4 width (blocks 8/16/32/64): the real one costs seconds."""
    cfg.merge_from_dict(
        {
            "model.method": method,
            "model.backbone.base_channels": 8,
            "model.backbone.stem_channels": 8,
            "model.decode_head.in_channels": 64,
            "model.decode_head.channels": 16,
            "model.auxiliary_head.in_channels": 32,
            "model.auxiliary_head.channels": 8,
        }
    )
    torch.manual_seed(0)
    return MODELS.build(cfg.model)


# ------------------------------------------------------------------ determinism
def test_a_canvas_depends_on_seed_split_and_index_only(val):
    again = FashionMNISTSegmentation(split="val", num_canvases=5)  # another object, length
    for index in (0, 3):
        a, b = val.get_data_info(index), again.get_data_info(index)
        assert a["img"].tobytes() == b["img"].tobytes()
        assert a["gt_seg_map"].tobytes() == b["gt_seg_map"].tobytes()
    assert val.canvas(0)[0].tobytes() != val.canvas(1)[0].tobytes()
    other_seed = FashionMNISTSegmentation(split="val", num_canvases=5, seed=1)
    assert other_seed.canvas(0)[0].tobytes() != val.canvas(0)[0].tobytes()
    # the item seed (epoch) moves the pipeline's randomness only, never the canvas
    plain = FashionMNISTSegmentation(split="val", num_canvases=5)
    loaded = [plain[SeededIndex(2, sample_seed(0, epoch, 2))] for epoch in range(3)]
    assert all(item["img"].tobytes() == val.canvas(2)[0][..., ::-1].tobytes() for item in loaded)


def test_the_train_flip_is_fixed_by_the_item_seed():
    flips = FashionMNISTSegmentation(
        split="val", num_canvases=5, pipeline=[dict(type="mmseg.RandomFlip", prob=0.5)]
    )
    canvas = flips.get_data_info(1)
    seen = set()
    for epoch in range(8):
        key = SeededIndex(1, sample_seed(0, epoch, 1))
        first, second = flips[key], flips[key]
        assert first["flip"] == second["flip"]
        assert np.array_equal(first["gt_seg_map"], second["gt_seg_map"])
        expect = canvas["gt_seg_map"][:, ::-1] if first["flip"] else canvas["gt_seg_map"]
        assert np.array_equal(first["gt_seg_map"], expect)
        assert np.array_equal(first["img"][:, :, 0], canvas["img"][:, ::-1, 0] if first["flip"]
                              else canvas["img"][:, :, 0])  # fmt: skip
        seen.add(first["flip"])
    assert seen == {True, False}


# ------------------------------------------------------------------ labels
def test_labels_match_an_independent_painting_of_the_layout(val):
    """Resize each garment with OpenCV (not the dataset's torch resize), paint labels back to
    front from the raw IDX files: the same map, except where a resized grey level lies within
    rounding of the threshold."""
    images = read_idx(Path(DEBIAN_ROOT) / "t10k-images-idx3-ubyte.gz")
    classes = read_idx(Path(DEBIAN_ROOT) / "t10k-labels-idx1-ubyte.gz")
    for index in range(4):
        _, labels = val.canvas(index)
        _, garments = val.layout(index)
        expect = np.zeros_like(labels)
        near_threshold = np.zeros(labels.shape, bool)
        for g in garments:
            assert g.label == classes[g.source]
            grey = cv2.resize(images[g.source].astype(np.float32), (g.side, g.side),
                              interpolation=cv2.INTER_LINEAR)  # fmt: skip
            box = np.s_[g.top : g.top + g.side, g.left : g.left + g.side]
            expect[box][grey > val.threshold] = g.label + 1
            near_threshold[box] |= np.abs(grey - val.threshold) < 1e-2
        differ = labels != expect
        assert not (differ & ~near_threshold).any(), f"canvas {index}"
        assert set(np.unique(labels)) <= {0} | {g.label + 1 for g in garments}
        assert len(np.unique(labels)) > 1, "a canvas with no garment visible"


def test_metainfo_names_background_and_the_ten_classes(val):
    meta = val.metainfo
    assert meta["classes"] == CLASSES and len(CLASSES) == 11 and CLASSES[0] == "background"
    assert len(meta["palette"]) == 11 and len({tuple(c) for c in PALETTE}) == 11


def test_missing_fashion_mnist_names_the_debian_package(tmp_path):
    cfg = load_config(str(HPFF))
    set_data_root(cfg, str(tmp_path / "nowhere"))  # what --data-root does
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        DATASETS.build(cfg.train_dataloader.dataset)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="split must be one of"):
        FashionMNISTSegmentation(split="test")
    with pytest.raises(ValueError, match="does not fit"):
        FashionMNISTSegmentation(split="val", canvas_size=32, garment_size=(20, 40))


# ------------------------------------------------------------------ with the shipped config
def test_the_config_pipeline_feeds_one_local_train_step_and_the_picture(tmp_path):
    init_default_scope("hpff_dist")
    cfg = load_config(str(HPFF))
    resolve_config(cfg)  # dataset, sampler and transform arguments checked
    for key in ("train_dataloader", "val_dataloader"):
        cfg[key].dataset.num_canvases = 4
    train = DATASETS.build(cfg.train_dataloader.dataset)
    batch = pseudo_collate([train[SeededIndex(i, sample_seed(0, 0, i))] for i in range(4)])
    assert batch["inputs"][0].dtype == torch.uint8 and batch["inputs"][0].shape == (3, 64, 64)
    model = _tiny(cfg, dict(method="infopro_hpff", k=4)).train()
    optim = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.01))
    losses = model.train_step(batch, optim)
    assert {"loss_ind", "loss_cas", "ce_last"} <= set(losses)
    assert all(torch.isfinite(v).all() for v in losses.values())
    assert len(model.learner.plan.modules) == 4

    hook = SegPredictionGrid(num_images=3, scale=2)
    path = hook.draw(model, DATASETS.build(cfg.val_dataloader.dataset), str(tmp_path / "p.png"))
    assert model.training  # mode restored
    with Image.open(path) as picture:
        width, height = picture.size
    assert width == 3 * 128 + 2 * 4 and height > 3 * 128 + 2 * 4
