"""Cityscapes, ``dali`` backend: agreement with the folder reference, pair alignment under the
random train transforms, per-rank counts, bad data, and a tiny DeepLab trained through
``tools/train.py`` on it.

Everything is written in the real formats: the tiny Cityscapes tree of ``cityscapes_tree``
(converted by ``tools/convert_cityscapes.py``) or a tree of block patterns whose image colour
encodes the label's class, sharded by the real writer (``make_seg_split_shards``). DALI runs
its CPU pipeline (``device="cpu"``), the graph a GPU job runs with the image decoder and
operators placed on the CPU.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cityscapes_tree import H, W, write_tree
from mmengine.config import Config
from PIL import Image
from seg_tiny import CROP, SCALE, tiny_deeplab_cfg

from hpff_dist import compat
from hpff_dist.data.cityscapes.dali_loader import (
    CROP_TRIES,
    DaliSegLoader,
    choose_crop,
    keep_ratio_size,
)
from hpff_dist.data.cityscapes.shards import make_seg_split_shards
from hpff_dist.data.imagenet import BadSampleError
from hpff_dist.data.imagenet.shards import find_split, read_dali_index
from hpff_dist.data.loader_builder import (
    LazyDaliSegLoader,
    build_dataloader,
    materialize_dataloaders,
    with_loader_args,
)
from hpff_dist.data.shard_writer import parse_shard_size

REPO = Path(__file__).resolve().parents[1]
FOLDER_CONFIG = REPO / "configs/_base_/datasets/cityscapes_folder.py"
DALI_CONFIG = REPO / "configs/_base_/datasets/cityscapes_dali.py"
BLOCK = 12  # block-pattern tree: 12x12 blocks, one class each
# (w, h); 64x48 resized by 0.5 is narrower than the crop, which then takes it whole
BLOCK_SIZES = [(96, 48), (96, 48), (80, 40), (96, 48), (64, 48), (96, 48), (80, 40)]
BLOCK_SCALE, BLOCK_CROP = (96, 48), (24, 48)  # RandomResize base (w, h), crop (h, w)


def _shard(root: Path, out: Path, split: str, size: str, **kw) -> Path:
    make_seg_split_shards(root, out, split, parse_shard_size(size), progress=False, **kw)
    return out


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """The shared tiny tree (3 train, 1 val images, 64x32 random pixels), converted."""
    root = tmp_path_factory.mktemp("cityscapes")
    write_tree(root)
    proc = subprocess.run(
        [sys.executable, "tools/convert_cityscapes.py", str(root)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return root


@pytest.fixture(scope="module")
def shards(tree, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cityscapes_wds")
    _shard(tree, out, "train", "2")
    return _shard(tree, out, "val", "2")


def block_classes(height: int, width: int, phase: int) -> np.ndarray:
    """Class per 12x12 block, never equal for neighbouring blocks, not mirror-symmetric."""
    y, x = np.mgrid[:height, :width] // BLOCK
    return ((y * 5 + x * 3 + x * x + phase) % 19).astype(np.uint8)


def block_colour(classes: np.ndarray) -> np.ndarray:
    """(..., 3) RGB encoding a class: distinct per class in every channel."""
    c = classes.astype(np.int64)
    return np.stack([c * 13, 255 - c * 13, (c * 7 + 40) % 256], axis=-1).astype(np.uint8)


@pytest.fixture(scope="module")
def blocks(tmp_path_factory) -> Path:
    """7 train images of block patterns (sizes varied), their trainIds written directly; shards
    of 3, 3 and 1 samples (an odd number of uneven shards)."""
    root = tmp_path_factory.mktemp("blocks")
    for i, (w, h) in enumerate(BLOCK_SIZES):
        stem = f"zurich_{i:06d}_000019"
        images, labels = (root / d / "train" / "zurich" for d in ("leftImg8bit", "gtFine"))
        images.mkdir(parents=True, exist_ok=True)
        labels.mkdir(parents=True, exist_ok=True)
        classes = block_classes(h, w, phase=i)
        Image.fromarray(block_colour(classes)).save(images / f"{stem}_leftImg8bit.png")
        Image.fromarray(classes).save(labels / f"{stem}_gtFine_labelTrainIds.png")
    out = root / "shards"
    _shard(root, out, "train", "3")
    assert [len(read_dali_index(i)) for i in find_split(out, "train").indexes] == [3, 3, 1]
    return out


def _dali(root: Path, split: str = "val", **kw) -> DaliSegLoader:
    """The config's loader (``cityscapes_dali.py``) on ``root``, built as training builds it."""
    cfg = Config.fromfile(str(DALI_CONFIG)).to_dict()
    entry = cfg["train_dataloader" if kw.get("train", split == "train") else "val_dataloader"]
    args = dict(root=str(root), split=split, num_threads=1, device="cpu", rank=0, world_size=1)
    return build_dataloader(with_loader_args(entry, **{**args, **kw}))


def _folder(tree: Path, split: str, scale: tuple[int, int]):
    """The folder backend's val/test pipeline (mmseg's) on ``split`` of ``tree``."""
    cfg = Config.fromfile(str(FOLDER_CONFIG)).to_dict()
    entry = cfg["val_dataloader"]
    entry.update(num_workers=0, persistent_workers=False)
    entry["dataset"].update(
        data_root=str(tree),
        data_prefix=dict(img_path=f"leftImg8bit/{split}", seg_map_path=f"gtFine/{split}"),
    )
    entry["dataset"]["pipeline"][1]["scale"] = scale
    return build_dataloader(entry, seed=0)


def _samples(loader) -> dict[str, tuple[torch.Tensor, object]]:
    """``{relative img_path: (image, data sample)}`` over one epoch."""
    out = {}
    for batch in loader:
        for image, sample in zip(batch["inputs"], batch["data_samples"]):
            path = sample.img_path
            out[path[path.index("leftImg8bit/") :]] = (image, sample)
    return out


# --- (a) agreement with the folder reference -------------------------------------------------


@pytest.mark.parametrize("scale", [(W, H), (100, 50)], ids=["identity", "resized"])
@pytest.mark.parametrize("split", ["val", "train"])
def test_val_pipeline_agrees_with_the_folder_backend(tree, shards, split, scale):
    """Same images (exactly at Cityscapes' own scale: PNG is lossless and no resize happens;
    within 1 level when resized, cv2's and DALI's bilinear fixed point), same labels (never
    resized in val), same metainfo. The train split through the val pipeline: 4 samples."""
    folder = _samples(_folder(tree, split, scale))
    dali = _samples(_dali(shards, split, train=False, scale=scale, batch_size=2))
    assert sorted(dali) == sorted(folder) and len(dali) == (1 if split == "val" else 3)
    for path, (image, sample) in folder.items():
        got_image, got = dali[path]
        assert got_image.dtype == image.dtype == torch.uint8 and got_image.shape == image.shape
        diff = (got_image.int() - image.int()).abs().max().item()
        assert diff == 0 if scale == (W, H) else diff <= 1, (path, diff)
        assert got.gt_sem_seg.data.dtype == torch.int64
        assert torch.equal(got.gt_sem_seg.data, sample.gt_sem_seg.data)
        assert set(got.metainfo) == set(sample.metainfo)
        for key in ("ori_shape", "img_shape", "scale_factor", "reduce_zero_label"):
            assert got.metainfo[key] == sample.metainfo[key], key
        assert sample.seg_map_path.endswith(got.seg_map_path)


def test_keep_ratio_size_is_mmcvs_rescale_size():
    from mmcv.image.geometric import rescale_size

    rng = np.random.default_rng(0)
    for _ in range(2000):
        w, h = (int(v) for v in rng.integers(1, 3000, 2))
        ratio = rng.random() * 1.5 + 0.5
        scale = (int(2048 * ratio), int(1024 * ratio))
        assert keep_ratio_size(w, h, scale) == rescale_size((w, h), scale)


def test_crop_choice_is_mmsegs_random_crop_with_the_same_draws(monkeypatch):
    """Given the same offsets, ``choose_crop`` takes mmseg's window: the first of 10 whose
    non-ignored classes are more than one and none 75% or more, else the 11th."""
    compat.provide_mmcv_ops_without_compiled_extension()
    from mmseg.datasets.transforms import RandomCrop

    rng = np.random.default_rng(0)
    crop = RandomCrop(crop_size=(8, 16), cat_max_ratio=0.75)
    chosen = set()
    for _ in range(300):
        h, w = (int(v) for v in rng.integers(6, 40, 2))
        label = np.full((h, w), 255, np.uint8)  # mostly one class, ignored pixels, a few others
        label[rng.random((h, w)) < 0.9] = 3
        label[rng.random((h, w)) < rng.random() * 0.5] = rng.integers(0, 19)
        draws = rng.random((CROP_TRIES + 1, 2))
        margins = np.array([max(h - 8, 0), max(w - 16, 0)])
        offsets = iter(np.minimum((draws * (margins + 1)).astype(int), margins).ravel().tolist())
        monkeypatch.setattr(np.random, "randint", lambda low, high=None, it=offsets: next(it))
        y1, y2, x1, x2 = crop.crop_bbox({"img": np.zeros((h, w, 3)), "gt_seg_map": label})
        window = choose_crop(label[..., None], draws, (8, 16), 0.75)
        assert window.tolist() == [y1, x1, min(y2, h) - y1, min(x2, w) - x1]
        candidates = np.minimum((draws * (margins + 1)).astype(int), margins).tolist()
        chosen.add(candidates.index([y1, x1]))
    assert len(chosen) > 3  # first, later and last candidates all taken at some point


# --- (b) alignment under the random train transforms ----------------------------------------


def _interior(label: np.ndarray, radius: int) -> np.ndarray:
    """Pixels whose neighbours up to ``radius`` away have their class: block interiors. The
    radius must reach at least one source pixel (``ceil(scale factor)``), the reach of the
    bilinear image sample around the label's nearest one."""
    inner = np.zeros_like(label, dtype=bool)
    core = label[radius:-radius, radius:-radius]
    same = np.ones_like(core, dtype=bool)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            same &= label[dy : dy + core.shape[0], dx : dx + core.shape[1]] == core
    inner[radius:-radius, radius:-radius] = same
    return inner


def test_train_transforms_keep_image_and_label_aligned_and_vary(blocks):
    """Resize, crop and flip move the image and the label together: in every block interior
    the image's colour is its label's class, for several seeds over two epochs; and scales,
    flips, crops and sizes actually vary. A label shifted by one block would not pass."""
    flips, factors, shapes, crops = set(), set(), set(), set()
    checked = 0
    for seed in range(3):
        loader = _dali(
            blocks, "train", seed=seed, batch_size=2, drop_last=False, photometric=False,
            scale=BLOCK_SCALE, crop_size=BLOCK_CROP,
        )  # fmt: skip
        for _ in range(2):
            for batch in loader:
                for image, sample in zip(batch["inputs"], batch["data_samples"]):
                    label = sample.gt_sem_seg.data[0].numpy()
                    bgr = image.permute(1, 2, 0).numpy()
                    inner = _interior(label, math.ceil(sample.scale_factor[0]))
                    assert inner.mean() > 0.2, sample.metainfo
                    expected = block_colour(label)[..., ::-1]  # BGR, as cv2 loads it
                    diff = np.abs(bgr.astype(int) - expected.astype(int))[inner]
                    assert diff.max() <= 1, (sample.metainfo, diff.max())
                    shifted = np.roll(label, BLOCK, axis=1)
                    assert (block_colour(shifted)[..., ::-1] != bgr)[inner].any()
                    flips.add(sample.flip)
                    factors.add(sample.scale_factor)
                    shapes.add(sample.img_shape)
                    crops.add(label.tobytes())
                    checked += 1
    assert checked == 3 * 2 * 7
    assert flips == {True, False}
    assert len(factors) > 20 and len(crops) == checked
    assert (24, 48) in shapes and any(s != (24, 48) for s in shapes)  # small images: whole


def test_photometric_distortion_changes_colours_not_geometry(blocks):
    """Same seed with and without PhotoMetricDistortion: the same crops, other pixels."""
    runs = []
    for photometric in (False, True):
        loader = _dali(
            blocks, "train", seed=5, batch_size=7, photometric=photometric,
            scale=BLOCK_SCALE, crop_size=BLOCK_CROP,
        )  # fmt: skip
        runs.append(next(iter(loader)))
    plain, distorted = runs
    changed = 0
    for i, (sa, sb) in enumerate(zip(plain["data_samples"], distorted["data_samples"])):
        assert torch.equal(sa.gt_sem_seg.data, sb.gt_sem_seg.data)
        assert sa.metainfo == sb.metainfo
        changed += int(not torch.equal(plain["inputs"][i], distorted["inputs"][i]))
    assert changed >= 4  # each of 4 distortions has p 0.5: nearly all images change


# --- (c) per-rank counts ---------------------------------------------------------------------


@pytest.mark.parametrize("train", [False, True])
def test_two_ranks_run_equal_steps_and_see_every_sample_once(blocks, train):
    """7 samples in shards of 3, 3, 1 over 2 ranks: ceil(7 / 2) = 4 samples per rank, 2
    batches of 2 each; together every sample, the one padded repeat (DALI pads the short
    rank with its last sample) the only duplicate. Shuffled (train) or not."""
    per_rank = []
    for rank in range(2):
        loader = _dali(
            blocks, "train", train=train, rank=rank, world_size=2, batch_size=2,
            drop_last=False, scale=BLOCK_SCALE, crop_size=BLOCK_CROP,
        )  # fmt: skip
        batches = list(loader)
        assert len(batches) == len(loader) == 2
        assert [len(b["inputs"]) for b in batches] == [2, 2]
        per_rank.append([s.img_path for b in batches for s in b["data_samples"]])
    seen = per_rank[0] + per_rank[1]
    assert len(seen) == 8 and len(set(seen)) == 7
    assert len(set(per_rank[0]) & set(per_rank[1])) == 0


# --- (d) bad data ----------------------------------------------------------------------------


def _member(split, key: str, ext: str) -> tuple[str, int, int]:
    """(tar, data offset, size) of one member, from the DALI index."""
    for tar, idx in zip(split.tars, split.indexes):
        text = Path(idx).read_text()
        for line in text.splitlines()[1:]:
            fields = line.split()
            for i in range(0, len(fields), 4):
                if fields[i + 3] == f"{key}.{ext}":
                    return tar, int(fields[i + 1]), int(fields[i + 2])
    raise KeyError(key)


@pytest.mark.parametrize("ext", ["png", "seg.png"])
def test_a_corrupt_png_stops_the_run_naming_shard_and_key(shards, tmp_path, ext):
    """Bytes overwritten inside the image or the label (same length: the tar stays whole)."""
    out = tmp_path / "shards"
    shutil.copytree(shards, out)
    key = "aachen/aachen_000001_000019"
    tar, offset, size = _member(find_split(out, "train"), key, ext)
    with open(tar, "r+b") as f:
        f.seek(offset + 60)
        f.write(np.random.default_rng(0).integers(0, 256, size - 80, dtype=np.uint8).tobytes())
    loader = _dali(out, "train", train=False, batch_size=1)
    with pytest.raises(BadSampleError) as error:
        list(loader)
    assert f"shard={tar} key={key}" in str(error.value)


def test_a_truncated_shard_is_reported_and_skipped_within_the_budget(shards, tmp_path, caplog):
    out = tmp_path / "shards"
    shutil.copytree(shards, out)
    split = find_split(out, "train")
    key = "aachen/aachen_000001_000019"
    tar, offset, _ = _member(split, key, "seg.png")
    with open(tar, "r+b") as f:
        f.truncate(offset + 10)
    with pytest.raises(BadSampleError, match=f"shard={tar} key={key}"):
        len(_dali(out, "train", train=False, batch_size=1))  # max_bad_samples=0 (val entry)
    loader = _dali(out, "train", train=False, batch_size=1, max_bad_samples=1)
    paths = [s.img_path for b in loader for s in b["data_samples"]]
    assert len(paths) == 2 and not any(key.split("/")[1] in p for p in paths)
    assert f"shard={tar} key={key}" in caplog.text


def test_a_label_of_another_size_is_never_trained_on(tree, tmp_path):
    """Shards written unchecked with a label of the wrong size (the writer's check refuses
    it): the graph compares the image's header size with the decoded label's."""
    root = tmp_path / "tree"
    shutil.copytree(tree, root)
    seg = root / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelTrainIds.png"
    Image.fromarray(np.zeros((H // 2, W), np.uint8)).save(seg)
    out = _shard(root, tmp_path / "shards", "train", "2", check=False)
    for train in (False, True):
        loader = _dali(out, "train", train=train, batch_size=1, scale=SCALE, crop_size=CROP)
        with pytest.raises(BadSampleError, match="key=aachen/aachen_000000_000019: label 16x64"):
            list(loader)


# --- the lazy loader entry and (e) training through the tool ----------------------------------


def test_the_config_entry_is_lazy_and_exposes_the_dataset_metainfo(shards):
    cfg = Config.fromfile(str(DALI_CONFIG))
    cfg.val_dataloader.root = str(shards)
    cfg.val_dataloader.device = "cpu"
    cfg.test_dataloader = cfg.val_dataloader
    materialize_dataloaders(cfg)
    loader = cfg.val_dataloader
    assert isinstance(loader, LazyDaliSegLoader) and loader is cfg.test_dataloader
    assert loader._built is None and repr(loader).startswith("dict(type='DaliSegLoader'")
    assert len(loader.dataset) == 1 and len(loader) == 1
    meta = loader.dataset.metainfo
    assert (
        len(meta["classes"]) == 19 and meta["classes"][0] == "road" and len(meta["palette"]) == 19
    )
    with pytest.raises(TypeError):
        LazyDaliSegLoader(root=str(shards), normalize=True)


def _dali_loaders(shards: Path) -> dict:
    """The tiny DeepLab's loaders on the dali backend: seg_tiny's sizes for training, the
    images' own size for validation (so that both backends feed identical pixels)."""
    common = dict(type="DaliSegLoader", root=str(shards), num_threads=1, device="cpu")
    train = dict(common, split="train", batch_size=2, scale=SCALE, crop_size=CROP)
    val = dict(common, split="val", batch_size=1, scale=(W, H))
    return dict(train_dataloader=train, val_dataloader=val, test_dataloader=val)


def test_deeplab_trains_two_iterations_from_dali_and_validates_as_the_folder_backend(
    tree, shards, tmp_path
):
    """tools/train.py, 2 iterations (batch 2: ASPP's image pooling needs two images) and a
    validation on the dali backend with the shipped PerClassIoUMetric; the checkpoint's mIoU over the folder backend's val
    loader is the one logged (identical inputs and labels)."""
    cfg = tiny_deeplab_cfg("e2e", tree)
    for key, value in _dali_loaders(shards).items():
        setattr(cfg, key, value)
    cfg.custom_hooks = []
    cfg.visualizer.vis_backends = [dict(type="LocalVisBackend")]
    cfg.train_cfg.max_iters = cfg.train_cfg.val_interval = 2
    cfg.param_scheduler[0].end = 2
    cfg.default_hooks.checkpoint.interval = 2
    cfg.default_hooks.logger.interval = 1
    config = tmp_path / "deeplab_dali.py"
    cfg.dump(str(config))
    work = tmp_path / "work"
    proc = subprocess.run(
        [sys.executable, "tools/train.py", str(config), "--work-dir", str(work), "--no-test"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    (scalars,) = work.glob("*/vis_data/scalars.json")
    lines = [json.loads(line) for line in scalars.read_text().splitlines()]
    assert [line["iter"] for line in lines if any("loss" in k for k in line)] == [1, 2]
    (logged,) = [line["mIoU"] for line in lines if "mIoU" in line]
    assert (work / "iter_2.pth").is_file()

    state = torch.load(work / "iter_2.pth", map_location="cpu", weights_only=False)
    assert {"backbone.stem.0.weight", "decode_head.conv_seg.weight"} <= state["state_dict"].keys()
    miou = {
        backend: _miou(cfg, state["state_dict"], loader)
        for backend, loader in (
            ("folder", _folder(tree, "val", (W, H))),
            ("dali", _dali(shards, "val", batch_size=1, scale=(W, H))),
        )
    }
    assert miou["folder"] == miou["dali"] == pytest.approx(logged, abs=0.005), (miou, logged)


def _miou(cfg: Config, state_dict: dict, loader) -> float:
    """mmseg's IoUMetric of the checkpoint's predictions over ``loader`` (in process)."""
    from mmengine.registry import DefaultScope

    import segmentation  # noqa: F401  (registers the segmentor; mmcv.ops before mmseg)
    from hpff_dist.registry import MODELS

    with DefaultScope.overwrite_default_scope("hpff_dist"):
        model = MODELS.build(cfg.model)
    model.load_state_dict(state_dict)
    model.eval()
    from mmengine.evaluator import Evaluator
    from mmseg.evaluation import IoUMetric

    evaluator = Evaluator(IoUMetric(iou_metrics=["mIoU"]))  # as mmengine's ValLoop runs it
    evaluator.dataset_meta = loader.dataset.metainfo
    with torch.no_grad():
        for batch in loader:
            evaluator.process(data_samples=model.val_step(batch), data_batch=batch)
    return evaluator.evaluate(len(loader.dataset))["mIoU"]
