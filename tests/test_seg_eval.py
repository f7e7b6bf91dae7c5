"""Segmentation evaluation: tools/test.py (whole, slide, --tta, --show-dir, --out, 2 processes),
``SegTTAAverage``/``TTATestLoop`` (segmentation/tta.py) and ``PerClassIoUMetric``
(segmentation/evaluation.py), on the tiny DeepLabV3 of tests/seg_tiny.py (CPU).

In-process checks compare against computations written here from their definitions: flip-TTA
of a mirror-equivariant model (symmetric kernels, odd sizes at every stride) against
single-scale, multi-scale averaging against softmax-resize-average by hand, the metric against
a numpy confusion matrix. The tool runs share one checkpoint, written by tools/train.py with
the DeepSpeed strategy (a directory: what a distributed run writes and evaluates), and one
tiny Cityscapes tree; the 2-process evaluation (torchrun, gloo) must give the single-process
metrics exactly.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import os
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cityscapes_tree import SAMPLES, H, W, write_tree
from mmengine.config import Config, ConfigDict
from mmengine.dataset import pseudo_collate
from mmengine.registry import DefaultScope
from PIL import Image
from seg_tiny import tiny_deeplab_cfg

import segmentation  # noqa: F401  (registers the segmentor; mmcv.ops before mmseg)
from hpff_dist.registry import DATASETS, MODELS
from segmentation.evaluation import NO_LABELS_KEY, PerClassIoUMetric, SegPredictionPictures
from segmentation.tta import VIEW_KEYS, SegTTAAverage

REPO = Path(__file__).resolve().parents[1]
GAP = 4  # segmentation.visualize.side_by_side's gap
TRAIN_SPLIT = [  # evaluate the 3 train images: an odd count, so 2 ranks pad one
    "test_dataloader.dataset.data_prefix.img_path=leftImg8bit/train",
    "test_dataloader.dataset.data_prefix.seg_map_path=gtFine/train",
]
LOAD = dict(type="mmseg.LoadImageFromFile")
LABELS = dict(type="mmseg.LoadAnnotations")
PACK = dict(type="mmseg.PackSegInputs")
FLIPS = [
    dict(type="mmseg.RandomFlip", prob=0.0, direction="horizontal"),
    dict(type="mmseg.RandomFlip", prob=1.0, direction="horizontal"),
]


def tta_pipeline(scales: list[float], labels: bool = True) -> list[dict]:
    resizes = [dict(type="mmseg.Resize", scale_factor=s, keep_ratio=True) for s in scales]
    groups = [resizes, FLIPS] + ([[LABELS]] if labels else []) + [[PACK]]
    return [LOAD, dict(type="mmseg.TestTimeAug", transforms=groups)]


def write_train_ids(root: Path, expected: dict[str, np.ndarray]) -> None:
    """The labelTrainIds files tools/convert_cityscapes.py makes (its tests check that it
    makes exactly these), written directly: no conversion run needed here."""
    for split, city, stem, _ in SAMPLES:
        path = root / "gtFine" / split / city / f"{stem}_gtFine_labelTrainIds.png"
        Image.fromarray(expected[stem]).save(path)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """The tiny Cityscapes tree (3 train, 1 val image, 64x32), plus a test split of images
    without annotations."""
    root = tmp_path_factory.mktemp("cityscapes")
    write_train_ids(root, write_tree(root))
    test = root / "leftImg8bit" / "test" / "berlin"
    test.mkdir(parents=True)
    rng = np.random.default_rng(5)
    for i in range(2):
        pixels = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(test / f"berlin_00000{i}_000019_leftImg8bit.png")
    return root


def build(cfg: dict) -> object:
    with DefaultScope.overwrite_default_scope("hpff_dist"):
        return DATASETS.build(cfg)


def tiny_model(seed: int = 0, symmetric: bool = False) -> torch.nn.Module:
    """The tiny DeepLabV3 in eval mode, random but not degenerate: BatchNorm statistics from
    two random batches, classifier weights scaled up (an untrained model predicts one class
    everywhere). ``symmetric``: every conv kernel mirrored onto itself (left-right), which
    with symmetric padding makes the network commute with a horizontal flip wherever each
    stride-2 layer sees an odd width."""
    cfg = tiny_deeplab_cfg("e2e")
    with DefaultScope.overwrite_default_scope("hpff_dist"):
        torch.manual_seed(seed)
        model = MODELS.build(cfg.model)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d) and symmetric:
                module.weight.copy_((module.weight + module.weight.flip(-1)) / 2)
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.reset_running_stats()
                module.momentum = None  # running stats: the plain average of the batches
        model.decode_head.conv_seg.weight.mul_(20.0)
        model.train()
        g = torch.Generator().manual_seed(seed)
        for _ in range(2):
            model._forward(torch.randn(2, 3, 33, 65, generator=g))
    return model.eval()


def probabilities(sample) -> torch.Tensor:
    return sample.seg_logits.data.softmax(dim=0)


# --- SegTTAAverage --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def odd_tree(tmp_path_factory) -> Path:
    """One 33x17 image: odd widths at every stride-2 layer (33 -> 17 -> 9 -> 5)."""
    root = tmp_path_factory.mktemp("odd")
    images, labels = root / "leftImg8bit/val/odd", root / "gtFine/val/odd"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (17, 33, 3), dtype=np.uint8)).save(
        images / "odd_000000_000019_leftImg8bit.png"
    )
    Image.fromarray(rng.integers(0, 19, (17, 33), dtype=np.uint8)).save(
        labels / "odd_000000_000019_gtFine_labelTrainIds.png"
    )
    return root


def test_flip_tta_of_a_mirror_equivariant_model_equals_single_scale(odd_tree):
    dataset = dict(
        type="CityscapesFolder",
        data_root=str(odd_tree),
        data_prefix=dict(img_path="leftImg8bit/val", seg_map_path="gtFine/val"),
    )
    single_data = pseudo_collate([build({**dataset, "pipeline": [LOAD, LABELS, PACK]})[0]])
    tta_data = pseudo_collate([build({**dataset, "pipeline": tta_pipeline([1.0])})[0]])
    assert len(tta_data["inputs"]) == 2  # the image and its mirror
    assert torch.equal(tta_data["inputs"][1][0], tta_data["inputs"][0][0].flip(-1))

    def compare(model) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            single = probabilities(model.test_step(single_data)[0])
            merged = SegTTAAverage(module=model).test_step(copy.deepcopy(tta_data))[0]
        return single, merged.seg_logits.data.exp()

    single, merged = compare(tiny_model(symmetric=True))
    assert single.shape == merged.shape == (19, 17, 33)
    assert torch.allclose(merged, single, atol=1e-5), (merged - single).abs().max()
    # not vacuous: the prediction itself is not mirror-symmetric (so the flipped view had to
    # be flipped back), and without symmetric kernels flip-TTA does change it
    assert (single - single.flip(-1)).abs().max() > 1e-2
    plain_single, plain_merged = compare(tiny_model(symmetric=False))
    assert (plain_merged - plain_single).abs().max() > 1e-3


@pytest.fixture(scope="module")
def multiscale(tree) -> dict:
    """The val image at scales 0.5, 1.0, 1.5 x 2 flips through SegTTAAverage."""
    scales = [0.5, 1.0, 1.5]
    dataset = build(
        dict(
            type="CityscapesFolder",
            data_root=str(tree),
            data_prefix=dict(img_path="leftImg8bit/val", seg_map_path="gtFine/val"),
            pipeline=tta_pipeline(scales),
        )
    )
    data = pseudo_collate([dataset[0]])
    model = tiny_model(seed=1)
    with torch.no_grad():
        merged = SegTTAAverage(module=model).test_step(copy.deepcopy(data))
    return dict(scales=scales, data=data, model=model, merged=merged, meta=dataset.metainfo)


def test_multiscale_views_and_average_match_a_hand_computation(multiscale):
    """Each view by hand: normalise, decode head, bilinear to the view, flip back, bilinear
    to the image, softmax; the mean over views and its argmax are the merged prediction."""
    model, data, merged = multiscale["model"], multiscale["data"], multiscale["merged"]
    views = [batch[0] for batch in data["inputs"]]  # TestTimeAug order: scale-major, flip
    expected_shapes = [(round(H * s), round(W * s)) for s in multiscale["scales"] for _ in "ab"]
    assert [tuple(v.shape[1:]) for v in views] == expected_shapes
    mean = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)
    total = torch.zeros(19, H, W)
    with torch.no_grad():
        for index, view in enumerate(views):
            flipped = index % 2 == 1
            if flipped:
                assert torch.equal(view, views[index - 1].flip(-1))
            x = ((view[[2, 1, 0]].float() - mean) / std)[None]  # BGR -> RGB
            logits = model._forward(x)
            logits = F.interpolate(logits, size=view.shape[1:], mode="bilinear")
            if flipped:
                logits = logits.flip(-1)
            logits = F.interpolate(logits, size=(H, W), mode="bilinear")
            total += logits[0].softmax(dim=0)
    hand = total / len(views)
    got = merged[0].seg_logits.data.exp()
    assert got.shape == (19, H, W)
    assert torch.allclose(got, hand, atol=1e-5), (got - hand).abs().max()
    pred = merged[0].pred_sem_seg.data
    assert pred.shape == (1, H, W)
    top2 = hand.topk(2, dim=0).values
    clear = (top2[0] - top2[1]) > 1e-4  # pixels without a near tie
    assert clear.float().mean() > 0.9
    assert torch.equal(pred[0][clear], hand.argmax(0)[clear])
    assert len(pred.unique()) > 1, "a one-class prediction would make this test weak"
    # mmengine's BaseTTAModel.test_step (every view first, then merge_preds): the same
    from mmengine.model import BaseTTAModel

    with torch.no_grad():
        tta = SegTTAAverage(module=model)
        again = BaseTTAModel.test_step(tta, copy.deepcopy(data))[0]
    assert torch.allclose(again.seg_logits.data, merged[0].seg_logits.data, atol=1e-6)
    assert again.metainfo == merged[0].metainfo


def test_merged_samples_keep_the_image_metainfo_so_img_path_readers_work(multiscale, tmp_path):
    """mmseg's ``--tta --out`` failure: ``IoUMetric.process`` with an ``output_dir`` reads
    ``data_sample['img_path']``, which mmseg < 1.1's merged ``SegTTAModel`` sample lacked
    (``KeyError: 'img_path'``). Ours is the image's sample: img_path, seg_map_path,
    ori_shape, ground truth; no per-view keys."""
    from mmseg.evaluation.metrics import IoUMetric
    from mmseg.structures import SegDataSample

    merged = multiscale["merged"][0]
    stem = "frankfurt_000000_000019"
    assert merged.img_path.endswith(f"{stem}_leftImg8bit.png")
    assert merged.seg_map_path.endswith(f"{stem}_gtFine_labelTrainIds.png")
    assert tuple(merged.ori_shape) == (H, W) and merged.tta_views == 6
    assert not VIEW_KEYS & set(merged.metainfo_keys())
    with Image.open(merged.seg_map_path) as labels:
        assert np.array_equal(merged.gt_sem_seg.data[0].numpy(), np.asarray(labels))

    for metric_type in (IoUMetric, PerClassIoUMetric):  # mmseg's path and ours
        metric = metric_type(output_dir=str(tmp_path / metric_type.__name__))
        metric.dataset_meta = multiscale["meta"]
        metric.process(multiscale["data"], [merged.to_dict()])
        with Image.open(tmp_path / metric_type.__name__ / f"{stem}_leftImg8bit.png") as png:
            assert np.array_equal(np.asarray(png), merged.pred_sem_seg.data[0].numpy())

    # the failure itself, on a merged sample without metainfo (mmseg 1.0's)
    bare = SegDataSample(pred_sem_seg=merged.pred_sem_seg, gt_sem_seg=merged.gt_sem_seg)
    metric = IoUMetric(output_dir=str(tmp_path / "bare"))
    metric.dataset_meta = multiscale["meta"]
    with pytest.raises(KeyError, match="img_path"):
        metric.process({}, [bare.to_dict()])
    ours = PerClassIoUMetric(output_dir=str(tmp_path / "bare"))
    ours.dataset_meta = multiscale["meta"]
    with pytest.raises(KeyError, match="SegTTAAverage"):
        ours.process({}, [bare.to_dict()])
    # the pictures hook falls back to the batch's first view for such a sample
    hook = SegPredictionPictures(str(tmp_path / "pictures"))
    hook.palette, hook.img_root = multiscale["meta"]["palette"], None
    hook.after_test_iter(None, 0, multiscale["data"], [bare])
    assert (tmp_path / "pictures" / f"{stem}_leftImg8bit.png").is_file()


def test_tta_without_ground_truth_predicts_and_the_metric_says_so(tree, tmp_path):
    """A test split of images only (mmseg's PR #3152 case): merged predictions without
    gt_sem_seg, two-panel pictures, and a metric that reports the missing labels."""
    dataset = build(
        dict(
            type="CityscapesFolder",
            data_root=str(tree),
            data_prefix=dict(img_path="leftImg8bit/test"),
            pipeline=tta_pipeline([0.5, 1.0], labels=False),
        )
    )
    data = pseudo_collate([dataset[0], dataset[1]])
    with torch.no_grad():
        merged = SegTTAAverage(module=tiny_model()).test_step(data)
    assert len(merged) == 2 and all("gt_sem_seg" not in s for s in merged)
    assert all(s.pred_sem_seg.data.shape == (1, H, W) for s in merged)
    metric = PerClassIoUMetric()
    metric.dataset_meta = dataset.metainfo
    metric.process(data, [s.to_dict() for s in merged])
    assert metric.evaluate(2) == {NO_LABELS_KEY: 2.0}
    hook = SegPredictionPictures(str(tmp_path))
    hook.palette, hook.img_root = dataset.metainfo["palette"], dataset.data_prefix["img_path"]
    hook.after_test_iter(None, 0, data, merged)
    with Image.open(tmp_path / "berlin" / "berlin_000001_000019_leftImg8bit.png") as picture:
        assert picture.size == (2 * W + GAP, H)  # image | prediction


def test_slide_inference_runs_with_windows_smaller_than_the_image(tree):
    dataset = build(
        dict(
            type="CityscapesFolder",
            data_root=str(tree),
            data_prefix=dict(img_path="leftImg8bit/val", seg_map_path="gtFine/val"),
            pipeline=[LOAD, LABELS, PACK],
        )
    )
    data = pseudo_collate([dataset[0]])
    model = tiny_model()
    with torch.no_grad():
        whole = probabilities(model.test_step(copy.deepcopy(data))[0])
        model.test_cfg = ConfigDict(mode="slide", crop_size=(16, 32), stride=(8, 16))
        slide = probabilities(model.test_step(copy.deepcopy(data))[0])
        model.test_cfg = ConfigDict(mode="slide", crop_size=(H, W), stride=(8, 16))
        covering = probabilities(model.test_step(copy.deepcopy(data))[0])
    assert slide.shape == whole.shape == (19, H, W) and torch.isfinite(slide).all()
    assert (slide - whole).abs().max() > 1e-3  # 3 x 3 windows of a quarter of the image
    assert torch.allclose(covering, whole, atol=1e-6)


# --- PerClassIoUMetric ----------------------------------------------------------------------


def test_metric_matches_a_hand_confusion_matrix_with_ignored_pixels():
    classes = ("a", "b", "c", "d")
    rng = np.random.default_rng(0)
    gts, preds = [], []
    for _ in range(2):
        gt = rng.choice([0, 1, 255], size=(6, 7), p=[0.4, 0.4, 0.2]).astype(np.int64)
        pred = rng.choice([0, 1, 2], size=(6, 7)).astype(np.int64)
        pred[gt == 255] = 3  # only on ignored pixels: must not count
        gts.append(gt)
        preds.append(pred)
    samples = [
        {
            "pred_sem_seg": {"data": torch.from_numpy(p)[None]},
            "gt_sem_seg": {"data": torch.from_numpy(g)[None]},
        }
        for p, g in zip(preds, gts)
    ]
    metric = PerClassIoUMetric(iou_metrics=["mIoU"])
    metric.dataset_meta = dict(classes=classes)
    metric.process({}, samples)
    got = metric.evaluate(2)

    gt, pred = np.concatenate([g.ravel() for g in gts]), np.concatenate([p.ravel() for p in preds])
    keep = gt != 255
    cm = np.bincount(gt[keep] * 4 + pred[keep], minlength=16).reshape(4, 4).astype(float)
    tp = np.diag(cm)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / (cm.sum(0) + cm.sum(1) - tp)  # c: predicted only -> 0; d: nowhere -> nan
        acc = tp / cm.sum(1)  # c, d: not in the ground truth -> nan
    assert iou[2] == 0 and math.isnan(iou[3]) and math.isnan(acc[2])
    expected = {"aAcc": tp.sum() / cm.sum() * 100}
    expected["mIoU"] = np.nanmean(iou) * 100
    expected["mAcc"] = np.nanmean(acc) * 100
    for name, values in (("IoU", iou), ("Acc", acc)):
        expected.update({f"{name}.{c}": v * 100 for c, v in zip(classes, values)})
    assert list(got) == list(expected)
    for key, value in expected.items():
        if math.isnan(value):
            assert math.isnan(got[key]), key
        else:
            assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key


# --- tools/test.py ----------------------------------------------------------------------------


def _tool_module():
    spec = importlib.util.spec_from_file_location("hpff_test_tool", REPO / "tools" / "test.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _args(**kw) -> Namespace:
    return Namespace(**{"config": "x.py", "slide": None, "tta": False, "show_dir": None, **kw})


def test_tool_refuses_what_a_config_cannot_do_naming_the_fix():
    tool = _tool_module()
    cfg = tiny_deeplab_cfg("e2e")
    cfg.tta_model = None
    with pytest.raises(KeyError, match=r"tta_model = dict\(type='SegTTAAverage'\)"):
        tool.apply_test_options(cfg, _args(tta=True))
    cfg.tta_pipeline = None
    with pytest.raises(KeyError, match="has no tta_pipeline. Add one"):
        tool.apply_test_options(cfg, _args(tta=True))
    cfg = tiny_deeplab_cfg("e2e")
    cfg.tta_model = dict(type="LocalEncoderDecoder")
    with pytest.raises(TypeError, match="not a TTA model"):
        tool.apply_test_options(cfg, _args(tta=True))
    dali = Config.fromfile(REPO / "configs/cityscapes/deeplabv3_r101_d8_e2e_dali.py")
    with pytest.raises(ValueError, match="deeplabv3_r101_d8_e2e_wds.py CHECKPOINT --tta"):
        tool.apply_test_options(
            dali, _args(tta=True, config="configs/cityscapes/deeplabv3_r101_d8_e2e_dali.py")
        )
    classification = Config.fromfile(REPO / "configs/fashion_mnist/resnet32_e2e.py")
    for kw in (dict(slide=[8, 8, 4, 4]), dict(show_dir="d")):
        with pytest.raises(ValueError, match="for segmentation configs"):
            tool.apply_test_options(classification, _args(**kw))
    assert tool.apply_test_options(classification, _args()) == []  # nothing changes


def _tool_env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("WORLD_SIZE", None)
    return env


def _run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
        env=_tool_env(),
    )  # fmt: skip
    assert proc.returncode == 0, (proc.stdout[-4000:], proc.stderr[-4000:])
    return proc


@pytest.fixture(scope="module")
def config_file(tree, tmp_path_factory) -> Path:
    """The shipped e2e config at tiny size on the tree, as one file (its custom_imports,
    ``segmentation``, register the metric, hook and TTA classes)."""
    cfg = tiny_deeplab_cfg("e2e", tree)
    path = tmp_path_factory.mktemp("config") / "tiny_deeplab.py"
    cfg.dump(str(path))
    return path


@pytest.fixture(scope="module")
def checkpoint(config_file, tmp_path_factory) -> Path:
    """One iteration of tools/train.py with the DeepSpeed strategy in one process: a DeepSpeed
    checkpoint directory, which 2 ranks load as DeepSpeed and one process as weights."""
    work = tmp_path_factory.mktemp("train")
    _run(
        "tools/train.py", str(config_file), "--work-dir", str(work), "--no-test",
        "--cfg-options", "strategy.type=LocalDeepSpeedStrategy", "train_cfg.max_iters=1",
        "train_cfg.val_interval=100", "default_hooks.checkpoint.interval=1",
    )  # fmt: skip
    path = work / "iter_1.pth"
    assert (path / "mp_rank_00_model_states.pt").is_file()
    return path


def _test_tool(config: Path, ckpt: Path, work: Path, *options: str) -> subprocess.CompletedProcess:
    return _run(
        "tools/test.py", str(config), str(ckpt), "--work-dir", str(work / "work"),
        "--out", str(work / "metrics.json"), "--show-dir", str(work / "show"), *options,
    )  # fmt: skip


def _changes(work: Path) -> dict[str, dict]:
    records = json.loads((work / "work" / "config_changes.json").read_text())
    return {r["key"]: r for r in records if r["by"] == "tools/test.py"}


def _pictures(work: Path) -> dict[str, np.ndarray]:
    out = {}
    for path in sorted((work / "show").rglob("*.png")):
        with Image.open(path) as image:
            out[str(path.relative_to(work / "show"))] = np.asarray(image)
    return out


@pytest.fixture(scope="module")
def tta_single(config_file, checkpoint, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("tta_single")
    _test_tool(config_file, checkpoint, work, "--tta", "--cfg-options", *TRAIN_SPLIT)
    return work


@pytest.fixture(scope="module")
def whole_single(config_file, checkpoint, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("whole")
    _test_tool(config_file, checkpoint, work, "--cfg-options", *TRAIN_SPLIT)
    return work


def test_tool_tta_writes_per_class_json_and_pictures(tta_single):
    metrics = json.loads((tta_single / "metrics.json").read_text())
    for key in ("aAcc", "mIoU", "mAcc", "IoU.road", "Acc.road", "IoU.bicycle", "Acc.car"):
        assert key in metrics, key
    assert len([k for k in metrics if k.startswith("IoU.")]) == 19
    assert all(v is None or 0 <= v <= 100 for v in metrics.values())
    pictures = _pictures(tta_single)
    stems = sorted(f"{city}/{stem}_leftImg8bit.png" for s, city, stem, _ in SAMPLES if s == "train")
    assert sorted(pictures) == stems
    for picture in pictures.values():
        assert picture.shape == (H, 3 * W + 2 * GAP, 3)  # image | ground truth | prediction
    changes = _changes(tta_single)
    assert changes["test_cfg"]["new"] == {
        "type": "TTATestLoop",
        "tta_model": {"type": "SegTTAAverage"},
    }
    new_pipeline = changes["test_dataloader.dataset.pipeline"]["new"]
    assert new_pipeline[1]["type"] == "mmseg.TestTimeAug"
    assert [t["scale_factor"] for t in new_pipeline[1]["transforms"][0]] == [
        0.5, 0.75, 1.0, 1.25, 1.5, 1.75,
    ]  # fmt: skip
    assert changes["custom_hooks"]["new"][-1]["type"] == "SegPredictionPictures"


def test_tool_slide_with_a_covering_window_equals_whole(whole_single, config_file, checkpoint,
                                                        tmp_path):  # fmt: skip
    # the test pipeline resizes the 64x32 images to 128x64: one 64x128 window covers them
    _test_tool(config_file, checkpoint, tmp_path, "--slide", "64", "128", "32", "64",
               "--cfg-options", *TRAIN_SPLIT)  # fmt: skip
    whole = json.loads((whole_single / "metrics.json").read_text())
    assert json.loads((tmp_path / "metrics.json").read_text()) == whole
    slide_pictures, whole_pictures = _pictures(tmp_path), _pictures(whole_single)
    assert sorted(slide_pictures) == sorted(whole_pictures) and len(whole_pictures) == 3
    for name, picture in whole_pictures.items():
        assert np.array_equal(slide_pictures[name], picture), name
    change = _changes(tmp_path)["model.test_cfg"]
    assert change["old"] == {"mode": "whole"}
    assert change["new"] == {"mode": "slide", "crop_size": [64, 128], "stride": [32, 64]}


def test_tool_tta_without_ground_truth(config_file, checkpoint, tmp_path):
    """The test split has images only: label loading is dropped (on record), pictures are
    image | prediction, and the JSON says how many images had no labels."""
    config = tmp_path / "test_split.py"
    config.write_text(
        f"_base_ = [{str(config_file)!r}]\n"
        "test_dataloader = dict(dataset=dict(data_prefix=dict(_delete_=True, "
        "img_path='leftImg8bit/test')))\n"
    )
    proc = _test_tool(config, checkpoint, tmp_path, "--tta")
    assert "no mIoU/aAcc: the test data has no ground-truth labels" in proc.stdout
    assert json.loads((tmp_path / "metrics.json").read_text()) == {NO_LABELS_KEY: 2.0}
    pictures = _pictures(tmp_path)
    assert len(pictures) == 2
    assert all(p.shape == (H, 2 * W + GAP, 3) for p in pictures.values())
    pipeline = _changes(tmp_path)["test_dataloader.dataset.pipeline"]["new"]  # the last record
    assert all(t["type"] != "mmseg.LoadAnnotations" for g in pipeline[1]["transforms"] for t in g)


def test_two_process_evaluation_equals_one_process(tta_single, config_file, checkpoint, tmp_path):
    """torchrun, 2 CPU processes (gloo, the DeepSpeed strategy): 3 images, so one rank gets a
    padded repeat that the metric must drop. Same JSON, same pictures as one process."""
    cmd = [
        "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "tools/test.py", str(config_file), str(checkpoint), "--launcher", "pytorch",
        "--work-dir", str(tmp_path / "work"), "--out", str(tmp_path / "metrics.json"),
        "--show-dir", str(tmp_path / "show"), "--tta", "--cfg-options", *TRAIN_SPLIT,
    ]  # fmt: skip
    _run(*cmd, timeout=420)
    single = json.loads((tta_single / "metrics.json").read_text())
    assert json.loads((tmp_path / "metrics.json").read_text()) == single
    assert single["mIoU"] > 0 and len({v for v in single.values() if v}) > 3  # not trivial
    dist_pictures, single_pictures = _pictures(tmp_path), _pictures(tta_single)
    assert sorted(dist_pictures) == sorted(single_pictures)
    for name, picture in single_pictures.items():
        assert np.array_equal(dist_pictures[name], picture), name
    assert not list((tmp_path / "show").rglob("*.partial.png"))


def test_each_image_counts_once_whatever_the_ranks_split(monkeypatch):
    """Results collected from ranks that each got a contiguous block padded at its end (DALI's
    readers): mmengine keeps the first `size`, which would drop an image and count a repeat;
    the metric keeps each image once, by path."""
    import mmengine.evaluator.metric as metric_module

    rng = np.random.default_rng(1)
    samples = [
        {
            "img_path": f"img{i}.png",
            "pred_sem_seg": {"data": torch.from_numpy(rng.integers(0, 3, (1, 5, 6)))},
            "gt_sem_seg": {"data": torch.from_numpy(rng.integers(0, 3, (1, 5, 6)))},
        }
        for i in range(3)
    ]

    def evaluate(order: list[int], size: int) -> dict:
        metric = PerClassIoUMetric(iou_metrics=["mIoU"])
        metric.dataset_meta = dict(classes=("a", "b", "c"))
        metric.process({}, [samples[i] for i in order])
        return metric.evaluate(size)

    reference = evaluate([0, 1, 2], 3)
    # 2 ranks, contiguous blocks [0, 0 (pad)] and [1, 2], as mmengine interleaves them
    collected = [0, 1, 0, 2]
    real = metric_module.collect_results
    monkeypatch.setattr(metric_module, "collect_results", lambda r, size, *a, **k: real(r, 3))
    truncated = evaluate(collected, 3)  # what plain truncation to `size` gives: image 2 lost
    monkeypatch.setattr(metric_module, "collect_results", real)
    assert truncated != reference
    assert evaluate(collected, 3) == reference
