"""A tiny DeepLabV3 built from the shipped Cityscapes configs, for CPU tests.

``tiny_deeplab_cfg`` loads ``configs/cityscapes/deeplabv3_r101_d8_<name>.py`` (the real model,
data, schedule and runtime bases) and shrinks only sizes: ResNetV1c-18-D8 with 8 base
channels (block widths 8/16/32/64, dilations and strides as R101-D8), ASPP 64 -> 16 and FCN
32 -> 8, BN, crops of 32x64 from the tiny tree's 64x32 images resized by 0.5-2.0 from 128x64.
"""

from __future__ import annotations

from pathlib import Path

from mmengine.config import Config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "cityscapes"
CROP = (32, 64)  # (h, w)
SCALE = (128, 64)  # (w, h) before the random 0.5-2.0 ratio


def tiny_model_options(method: dict | None = None) -> dict:
    """``--cfg-options`` that shrink the DeepLabV3-R101-D8 model (and set ``method``)."""
    options = {
        "model.arch": None,  # no ResNet-18 table: balanced split
        "model.image_size": CROP,
        "model.data_preprocessor.size": CROP,
        "model.backbone.depth": 18,
        "model.backbone.base_channels": 8,
        "model.backbone.stem_channels": 8,
        "model.decode_head.in_channels": 64,
        "model.decode_head.channels": 16,
        "model.decode_head.dilations": (1, 2, 3, 4),
        "model.auxiliary_head.in_channels": 32,
        "model.auxiliary_head.channels": 8,
    }
    for part in ("backbone", "decode_head", "auxiliary_head"):
        options[f"model.{part}.norm_cfg"] = dict(type="BN", requires_grad=True)
    if method is not None:
        options["model.method"] = dict(method)
    return options


def tiny_deeplab_cfg(
    name: str = "e2e", root: Path | None = None, method: dict | None = None
) -> Config:
    """The shipped config ``deeplabv3_r101_d8_<name>.py`` at tiny size (data on ``root``)."""
    cfg = Config.fromfile(CONFIGS / f"deeplabv3_r101_d8_{name}.py")
    options = tiny_model_options(method)
    if method is None:
        options.pop("model.method", None)
    if root is not None:
        for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
            options[f"{loader}.dataset.data_root"] = str(root)
            options[f"{loader}.num_workers"] = 0
            options[f"{loader}.persistent_workers"] = False
        options["train_dataloader.dataset.pipeline.2.scale"] = SCALE
        options["train_dataloader.dataset.pipeline.3.crop_size"] = CROP
        options["val_dataloader.dataset.pipeline.1.scale"] = SCALE
        options["test_dataloader.dataset.pipeline.1.scale"] = SCALE
    cfg.merge_from_dict(options)
    return cfg
