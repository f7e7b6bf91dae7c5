"""Cityscapes as webdataset shards: tools/make_shards.py --layout cityscapes and the webdataset
backend (CityscapesShards), checked against the folder backend on the same samples."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.config import Config
from PIL import Image

import hpff_dist.data  # noqa: F401  (registers datasets, samplers, collate functions)
from hpff_dist.data.cityscapes.folder import CityscapesFolder
from hpff_dist.data.cityscapes.shards import make_seg_split_shards
from hpff_dist.data.cityscapes.webdataset_loader import CityscapesShards
from hpff_dist.data.errors import CorruptDataError
from hpff_dist.data.imagenet.collate import seg_skip_bad_collate
from hpff_dist.data.imagenet.errors import BadSampleError
from hpff_dist.data.imagenet.samplers import ShardAwareDistributedSampler
from hpff_dist.data.sample_seeds import SeededIndex
from hpff_dist.data.shard_writer import parse_shard_size

REPO = Path(__file__).resolve().parents[1]
FOLDER_BASE = REPO / "configs/_base_/datasets/cityscapes_folder.py"
W, H = 64, 32
BLOCK = 8  # label = class of the 8x8 block, image = a colour per class: alignment is visible


def block_label(seed: int) -> np.ndarray:
    """A label map of 8x8 blocks of random classes (0-18, some 255)."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 20, (H // BLOCK, W // BLOCK)).astype(np.uint8)
    blocks[blocks == 19] = 255
    return np.kron(blocks, np.ones((BLOCK, BLOCK), np.uint8))


def colour_of(label: np.ndarray) -> np.ndarray:
    """The image of a block label: each class its own colour (ignore: grey)."""
    values = label.astype(np.int32)
    return np.stack([(values * 13) % 256, (values * 7 + 40) % 256, (255 - values * 11) % 256], -1)


def write_pairs(root: Path, split: str, stems: dict[str, list[str]], seed: int = 0) -> None:
    """Image + trainIds pairs in the official layout, block pattern shared by both."""
    for city, names in stems.items():
        for i, stem in enumerate(names):
            images = root / "leftImg8bit" / split / city
            labels = root / "gtFine" / split / city
            images.mkdir(parents=True, exist_ok=True)
            labels.mkdir(parents=True, exist_ok=True)
            label = block_label(seed * 1000 + hash((city, i)) % 997)
            Image.fromarray(colour_of(label).astype(np.uint8)).save(
                images / f"{stem}_leftImg8bit.png"
            )
            Image.fromarray(label).save(labels / f"{stem}_gtFine_labelTrainIds.png")


TRAIN = {
    "aachen": [f"aachen_{i:06d}_000019" for i in range(3)],
    "bremen": [f"bremen_{i:06d}_000019" for i in range(2)],
}
VAL = {"frankfurt": [f"frankfurt_{i:06d}_000019" for i in range(3)]}


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cityscapes")
    write_pairs(root, "train", TRAIN)
    write_pairs(root, "val", VAL, seed=1)
    return root


def make_shards(root: Path, out: Path, split: str, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "tools/make_shards.py", str(root), str(out), "--layout",
               "cityscapes", "--split", split, "--no-progress", *extra]  # fmt: skip
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def shards(tree, tmp_path_factory) -> Path:
    """Train in 3 uneven shards (2, 2, 1 samples), val in 2 (2, 1)."""
    out = tmp_path_factory.mktemp("shards")
    for split in ("train", "val"):
        proc = make_shards(tree, out, split, "--shard-size", "2")
        assert proc.returncode == 0, proc.stderr
    return out


def _pipelines() -> Config:
    return Config.fromfile(str(FOLDER_BASE))


def _folder(tree: Path, split: str, pipeline: list) -> object:
    prefix = dict(img_path=f"leftImg8bit/{split}", seg_map_path=f"gtFine/{split}")
    return CityscapesFolder(str(tree), data_prefix=prefix, pipeline=pipeline)


def _small_train_pipeline() -> list:
    """The shipped train pipeline at the tiny images' size: resize 128x64 by 0.5-2, crop 32x64."""
    pipeline = [dict(t) for t in _pipelines().train_pipeline]
    pipeline[2]["scale"] = (128, 64)
    pipeline[3]["crop_size"] = (32, 64)
    return pipeline


# --------------------------------------------------------------------- writing the shards
def test_every_pair_is_written_once_with_its_bytes_unchanged(tree, shards):
    manifest = json.loads((shards / "manifest-train.json").read_text())
    assert [r["nsamples"] for r in manifest["shards"]] == [2, 2, 1]
    assert manifest["num_samples"] == 5 and manifest["members"] == ["json", "seg.png"]
    assert manifest["per_city"] == {"aachen": 3, "bremen": 2}
    seen = {}
    for record in manifest["shards"]:
        with tarfile.open(shards / record["url"]) as tar:
            for info in tar:
                seen[info.name] = tar.extractfile(info).read()
    stems = [(c, s) for c, names in TRAIN.items() for s in names]
    assert len(seen) == 3 * len(stems)
    for city, stem in stems:
        key = f"{city}/{stem}"
        image = tree / "leftImg8bit/train" / city / f"{stem}_leftImg8bit.png"
        label = tree / "gtFine/train" / city / f"{stem}_gtFine_labelTrainIds.png"
        assert seen[f"{key}.png"] == image.read_bytes()
        assert seen[f"{key}.seg.png"] == label.read_bytes()
        meta = json.loads(seen[f"{key}.json"])
        assert meta == {
            "key": key,
            "img_path": str(image.relative_to(tree)),
            "seg_map_path": str(label.relative_to(tree)),
            "height": H,
            "width": W,
        }
    for record in manifest["shards"]:
        digest = hashlib.sha256((shards / record["url"]).read_bytes()).hexdigest()
        assert record["sha256"] == digest
    check = subprocess.run(
        [sys.executable, "tools/check_shards.py", str(shards), "--decode", "--checksums"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr


def test_resume_rewrites_a_truncated_shard_to_the_same_bytes(tree, shards, tmp_path):
    out = tmp_path / "wds"
    assert make_shards(tree, out, "train", "--shard-size", "2").returncode == 0
    cut = out / "train-000001.tar"
    whole = cut.read_bytes()
    cut.write_bytes(whole[: len(whole) // 2])
    proc = make_shards(tree, out, "train", "--shard-size", "2", "--resume")
    assert proc.returncode == 0, proc.stderr
    assert "rewriting" in proc.stderr and "train-000001.tar" in proc.stderr
    assert cut.read_bytes() == whole == (shards / "train-000001.tar").read_bytes()


def test_bad_pairs_are_named_and_skipped_within_the_budget(tmp_path):
    root = tmp_path / "cs"
    write_pairs(root, "train", {"aachen": [f"aachen_{i:06d}_000019" for i in range(4)]})
    images, labels = root / "leftImg8bit/train/aachen", root / "gtFine/train/aachen"
    corrupt = images / "aachen_000000_000019_leftImg8bit.png"
    corrupt.write_bytes(corrupt.read_bytes()[:60])  # a truncated PNG
    small = labels / "aachen_000001_000019_gtFine_labelTrainIds.png"
    Image.fromarray(np.zeros((H // 2, W // 2), np.uint8)).save(small)  # size differs
    ids = labels / "aachen_000002_000019_gtFine_labelTrainIds.png"
    Image.fromarray(np.full((H, W), 26, np.uint8)).save(ids)  # a labelId, not a trainId
    proc = make_shards(root, tmp_path / "stop", "train")
    assert proc.returncode == 1 and str(corrupt) in proc.stderr and "--max-bad" in proc.stderr
    proc = make_shards(root, tmp_path / "wds", "train", "--max-bad", "3")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "wds/manifest-train.json").read_text())
    assert manifest["num_samples"] == 1
    errors = {e["key"]: e["error"] for e in manifest["skipped"]}
    assert errors["aachen/aachen_000000_000019"].startswith("image:")
    assert "label map is 32x16, its image 64x32" in errors["aachen/aachen_000001_000019"]
    assert "label values 26" in errors["aachen/aachen_000002_000019"]


def test_a_missing_trainids_file_names_the_conversion(tmp_path):
    write_pairs(tmp_path / "cs", "train", {"aachen": ["aachen_000000_000019"]})
    label = tmp_path / "cs/gtFine/train/aachen/aachen_000000_000019_gtFine_labelTrainIds.png"
    label.rename(label.with_name("aachen_000000_000019_gtFine_labelIds.png"))
    proc = make_shards(tmp_path / "cs", tmp_path / "wds", "train")
    assert proc.returncode == 1 and "tools/convert_cityscapes.py" in proc.stderr


# --------------------------------------------------------------------- the webdataset backend
def test_validation_samples_equal_the_folder_backends(tree, shards):
    pipeline = _pipelines().test_pipeline
    ours, reference = CityscapesShards(str(shards), "val", pipeline), _folder(tree, "val", pipeline)
    assert len(ours) == len(reference) == 3
    for i in range(3):
        a, b = ours[i], reference[i]
        assert torch.equal(a["inputs"], b["inputs"])
        assert torch.equal(a["data_samples"].gt_sem_seg.data, b["data_samples"].gt_sem_seg.data)
        assert a["data_samples"].ori_shape == b["data_samples"].ori_shape == (H, W)
        assert Path(b["data_samples"].img_path).name.startswith(
            Path(a["data_samples"].img_path.rpartition("#")[2]).name.split(".")[0]
        )
    assert ours.metainfo["classes"] == reference.metainfo["classes"]


def test_random_train_transforms_equal_the_folder_backends_and_keep_pairs_aligned(tree, shards):
    """The same seed gives the same crop, scale, flip and distortion from shards and folder,
    and without photometric distortion every pixel's colour still matches its label."""
    pipeline = _small_train_pipeline()
    ours, reference = (
        CityscapesShards(str(shards), "train", pipeline),
        _folder(tree, "train", pipeline),
    )
    no_photo = [t for t in pipeline if t["type"] != "mmseg.PhotoMetricDistortion"]
    geometric = CityscapesShards(str(shards), "train", no_photo)
    by_path = {Path(reference.get_data_info(i)["img_path"]).name: i for i in range(len(reference))}
    flips, crops = set(), set()
    for i in range(len(ours)):
        key = ours.get_data_info(i)["img_path"].rpartition("#")[2]
        j = by_path[Path(key).name.replace(".png", "_leftImg8bit.png")]
        for seed in range(6):
            a, b = ours[SeededIndex(i, seed)], reference[SeededIndex(j, seed)]
            assert torch.equal(a["inputs"], b["inputs"])
            assert torch.equal(a["data_samples"].gt_sem_seg.data, b["data_samples"].gt_sem_seg.data)
            sample = geometric[SeededIndex(i, seed)]
            image = sample["inputs"].permute(1, 2, 0).numpy()[..., ::-1]  # BGR -> RGB
            label = sample["data_samples"].gt_sem_seg.data[0].numpy()
            # nearest-neighbour label vs bilinear image (cv2's nearest is not centred: up to
            # a source pixel apart): compare where the 5x5 label is uniform
            inner = np.ones_like(label, bool)
            for dy in range(-2, 3):
                for dx in range(-2, 3):
                    inner &= np.roll(label, (dy, dx), (0, 1)) == label
            inner[[0, 1, -2, -1], :] = inner[:, [0, 1, -2, -1]] = False
            assert inner.sum() > label.size // 4
            expected = colour_of(label)[inner]
            assert np.abs(image[inner].astype(int) - expected).max() <= 2, (i, seed)
            flips.add(sample["data_samples"].flip)
            crops.add(hash(label.tobytes()))  # which part of which scale was cropped
    assert flips == {True, False} and len(crops) > 20  # scales and crops vary


def test_two_ranks_get_equal_counts_and_every_sample_of_uneven_shards(shards):
    dataset = CityscapesShards(str(shards), "train", [])
    assert dataset.shard_lengths == [2, 2, 1]
    parts = [
        [s.index for s in ShardAwareDistributedSampler(dataset, rank=r, world_size=2, seed=3)]
        for r in range(2)
    ]
    assert len(parts[0]) == len(parts[1]) == 3
    assert sorted(set(parts[0] + parts[1])) == list(range(5))  # one sample repeats as padding


def _corrupt_member(tar: Path, name: str) -> None:
    """Overwrite a member's data in place (same size): the tar stays whole, the PNG does not."""
    with tarfile.open(tar) as t:
        info = t.getmember(name)
    data = bytearray(tar.read_bytes())
    data[info.offset_data + 16 : info.offset_data + info.size] = bytes(info.size - 16)
    tar.write_bytes(bytes(data))


def _copy(shards: Path, out: Path) -> Path:
    out.mkdir()
    for path in shards.iterdir():
        (out / path.name).write_bytes(path.read_bytes())
    return out


def test_a_corrupt_image_is_skipped_with_shard_and_key_and_counted_once(shards, tmp_path, caplog):
    out = _copy(shards, tmp_path / "wds")
    _corrupt_member(out / "train-000000.tar", "aachen/aachen_000000_000019.png")
    _corrupt_member(out / "train-000001.tar", "aachen/aachen_000002_000019.png")
    pipeline = [t for t in _pipelines().train_pipeline[:2]] + [dict(type="mmseg.PackSegInputs")]
    dataset = CityscapesShards(str(out), "train", pipeline, max_bad_samples=1)
    paths = [dataset.get_data_info(i)["img_path"] for i in range(5)]
    first = next(i for i, p in enumerate(paths) if "aachen_000000" in p)
    second = next(i for i, p in enumerate(paths) if "aachen_000002" in p)
    good = next(i for i, p in enumerate(paths) if "bremen" in p)
    with caplog.at_level("WARNING"):
        for _ in range(3):  # three passes over the data: one bad sample, counted once
            assert dataset[first] is None
    assert "train-000000.tar key=aachen/aachen_000000_000019" in caplog.text
    # its place in the batch is taken by a good sample: the batch keeps its size
    batch = seg_skip_bad_collate([dataset[first], dataset[good]])
    assert len(batch["inputs"]) == 2 and torch.equal(batch["inputs"][0], batch["inputs"][1])
    with pytest.raises(BadSampleError, match="sample 2 exceeds max_bad_samples=1: .*aachen_000002"):
        dataset[second]


def test_a_shard_cut_inside_a_header_keeps_its_whole_samples(shards, tmp_path, caplog):
    """wids' reader would lose the whole shard to the cut header; the index keeps sample 0 and
    names the lost one."""
    out = _copy(shards, tmp_path / "wds")
    cut = out / "val-000000.tar"
    with tarfile.open(cut) as tar:
        second = [m for m in tar.getmembers() if "frankfurt_000001" in m.name][0]
    cut.write_bytes(cut.read_bytes()[: second.offset + 100])  # inside its header
    loading = [*_pipelines().train_pipeline[:2], dict(type="mmseg.PackSegInputs")]
    dataset = CityscapesShards(str(out), "val", loading, max_bad_samples=2)
    assert "frankfurt/frankfurt_000001_000019" in caplog.text  # lost, found at the start
    keys = [dataset.get_data_info(i)["img_path"].rpartition("#")[2] for i in range(3)]
    assert dataset[keys.index("frankfurt/frankfurt_000000_000019.png")] is not None
    with caplog.at_level("WARNING"):
        assert dataset[keys.index("frankfurt/frankfurt_000001_000019.png")] is None
    assert "truncated" in caplog.text


def test_a_label_of_another_size_is_never_trained_on(tree, tmp_path):
    """Written unchecked into a shard, or lying in the folder: both backends refuse the pair."""
    root = tmp_path / "cs"
    write_pairs(root, "train", {"aachen": ["aachen_000000_000019", "aachen_000001_000019"]})
    label = root / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelTrainIds.png"
    Image.fromarray(np.zeros((H, W // 2), np.uint8)).save(label)
    make_seg_split_shards(root, tmp_path / "wds", "train", parse_shard_size("10"), check=False,
                          progress=False)  # fmt: skip
    pipeline = _small_train_pipeline()
    with pytest.raises(BadSampleError, match="label map 32x32 but image .* is 64x32"):
        CityscapesShards(str(tmp_path / "wds"), "train", pipeline)[0]
    with pytest.raises(CorruptDataError, match="label map 32x32 but image"):
        _folder(root, "train", pipeline)[0]


def test_a_truncated_shard_is_found_before_the_first_epoch(shards, tmp_path):
    out = _copy(shards, tmp_path / "wds")
    cut = out / "val-000000.tar"
    cut.write_bytes(cut.read_bytes()[:4000])  # the second sample is lost
    with pytest.raises(BadSampleError, match="val-000000.tar has .* bytes, its manifest says"):
        CityscapesShards(str(out), "val", [])
    loading = [*_pipelines().train_pipeline[:2], dict(type="mmseg.PackSegInputs")]
    dataset = CityscapesShards(str(out), "val", loading, max_bad_samples=2)
    assert len(dataset) == 3 and dataset[1] is None and dataset[0] is not None


def test_missing_shards_name_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="--layout cityscapes"):
        CityscapesShards(str(tmp_path / "nowhere"), "train", [])


# --------------------------------------------------------------------- training from shards
def _tiny_config(
    path: Path, name: str, shards: Path | None = None, tree: Path | None = None
) -> Path:
    """The shipped ``deeplabv3_r101_d8_<name>.py`` at tiny size (``seg_tiny``), 2 iterations,
    on the shards (``root``) or on the folder tree."""
    sys.path.insert(0, str(REPO / "tests"))
    from seg_tiny import CROP, SCALE, tiny_deeplab_cfg

    cfg = tiny_deeplab_cfg(name, tree)
    if shards is not None:
        for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
            cfg[loader].dataset.root = str(shards)
            cfg[loader].num_workers = 0
            cfg[loader].persistent_workers = False
        cfg.train_dataloader.dataset.pipeline[2].scale = SCALE
        cfg.train_dataloader.dataset.pipeline[3].crop_size = CROP
        cfg.val_dataloader.dataset.pipeline[1].scale = SCALE
        cfg.test_dataloader.dataset.pipeline[1].scale = SCALE
    cfg.train_cfg.max_iters = cfg.train_cfg.val_interval = 2
    cfg.param_scheduler[0].end = 2
    cfg.default_hooks.checkpoint.interval = 2
    cfg.visualizer.vis_backends = [dict(type="LocalVisBackend")]
    cfg.custom_hooks = [h for h in cfg.custom_hooks if h["type"] != "ThroughputHook"]
    cfg.dump(str(path))
    return path


def _run(*args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env=env)  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc.stdout + proc.stderr


def test_deeplab_trains_from_the_shards_and_tests_as_from_the_folder(tree, shards, tmp_path):
    """2 iterations from shards through tools/train.py; tools/test.py then gives the same
    metrics on the shards as on the folder, and draws each prediction beside its image."""
    config = _tiny_config(tmp_path / "wds.py", "k4_infopro_hpff_wds", shards=shards)
    log = _run("tools/train.py", str(config), "--work-dir", str(tmp_path / "work"), "--no-test")
    checkpoint = tmp_path / "work/iter_2.pth"
    assert checkpoint.is_file() and "mIoU" in log
    pictures = tmp_path / "pictures"
    _run("tools/test.py", str(config), str(checkpoint), "--out", str(tmp_path / "wds.json"),
         "--show-dir", str(pictures))  # fmt: skip
    folder = _tiny_config(tmp_path / "folder.py", "k4_infopro_hpff", tree=tree)
    _run("tools/test.py", str(folder), str(checkpoint), "--out", str(tmp_path / "folder.json"))
    ours, reference = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("wds", "folder"))
    assert ours == reference and "mIoU" in ours
    drawn = sorted(p.relative_to(pictures).as_posix() for p in pictures.rglob("*.png"))
    assert drawn == [f"frankfurt/{stem}_leftImg8bit.png" for stem in VAL["frankfurt"]]
