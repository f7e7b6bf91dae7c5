"""Cityscapes from its folder layout: tools/convert_cityscapes.py and the CityscapesFolder dataset.

A tiny Cityscapes tree is written as real PNGs (and one polygons JSON) in the official layout.
The conversion is checked against the official labelId -> trainId table written out by hand
here, resumability against file contents and modification times, the dataset against mmseg's
train pipeline (at a small scale) and the errors against the commands they must name.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mmengine.config import Config
from mmengine.registry import DefaultScope
from PIL import Image

from hpff_dist.data.cityscapes import CityscapesLayoutError
from hpff_dist.data.errors import CorruptDataError
from hpff_dist.data.sample_seeds import SeededIndex
from hpff_dist.registry import DATASETS

REPO = Path(__file__).resolve().parents[1]
CONVERT = REPO / "tools" / "convert_cityscapes.py"
CONFIG = REPO / "configs" / "_base_" / "datasets" / "cityscapes_folder.py"
from cityscapes_tree import (  # noqa: E402
    SAMPLES,
    H,
    W,
    write_tree,
)


def train_ids_path(root: Path, split: str, city: str, stem: str) -> Path:
    return root / "gtFine" / split / city / f"{stem}_gtFine_labelTrainIds.png"


def convert(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(CONVERT), str(root), *args],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path_factory.mktemp("cityscapes")
    expected = write_tree(root)
    proc = convert(root, "--nproc", "2")
    assert proc.returncode == 0, proc.stderr
    assert "converted 4 (3 from labelIds, 1 from polygons), kept 0" in proc.stdout
    return root, expected


def small_config(root: Path) -> Config:
    """The base config on ``root`` at 1/32 of Cityscapes' scale (crop 16x32 of 64x32)."""
    cfg = Config.fromfile(CONFIG)
    options = {}
    for loader in ("train_dataloader", "val_dataloader"):
        options[f"{loader}.dataset.data_root"] = str(root)
    options["train_dataloader.dataset.pipeline.2.scale"] = (W, H)
    options["train_dataloader.dataset.pipeline.3.crop_size"] = (16, 32)
    options["val_dataloader.dataset.pipeline.1.scale"] = (W, H)
    cfg.merge_from_dict(options)
    return cfg


def build(dataset_cfg) -> object:
    with DefaultScope.overwrite_default_scope("hpff_dist"):  # as our configs run
        return DATASETS.build(dataset_cfg)


# --- tools/convert_cityscapes.py ------------------------------------------------------------------


def test_train_ids_follow_the_official_table(converted):
    root, expected = converted
    for split, city, stem, _ in SAMPLES:
        with Image.open(train_ids_path(root, split, city, stem)) as image:
            assert image.mode == "L"
            np.testing.assert_array_equal(np.asarray(image), expected[stem], err_msg=stem)
    assert not list(root.rglob("*.part")), "a temporary file was left behind"
    ignored = expected["aachen_000000_000019"] == 255
    assert ignored.any() and not ignored.all()


def test_resume_keeps_intact_files_and_redoes_a_truncated_one(converted, tmp_path):
    root, expected = converted
    outputs = [train_ids_path(root, *s[:3]) for s in SAMPLES]
    before = {p: p.stat().st_mtime_ns for p in outputs}
    proc = convert(root, "--resume", "--nproc", "1")
    assert proc.returncode == 0, proc.stderr
    assert "converted 0, kept 4 already converted, failed 0, of 4" in proc.stdout
    assert {p: p.stat().st_mtime_ns for p in outputs} == before

    broken = outputs[1]
    data = broken.read_bytes()
    try:
        broken.write_bytes(data[: len(data) // 2])  # a run killed mid-write (before renames)
        proc = convert(root, "--resume", "--nproc", "1")
        assert proc.returncode == 0, proc.stderr
        assert "converted 1 (1 from labelIds), kept 3" in proc.stdout
        with Image.open(broken) as image:
            np.testing.assert_array_equal(np.asarray(image), expected[SAMPLES[1][2]])
    finally:
        broken.write_bytes(data)  # the module's tree stays intact for the other tests


def test_converter_names_the_missing_gtfine_and_bad_label_ids(tmp_path):
    proc = convert(tmp_path)
    assert proc.returncode != 0
    assert f"{tmp_path / 'gtFine'} not found" in proc.stderr
    assert "unzip gtFine_trainvaltest.zip" in proc.stderr

    city = tmp_path / "gtFine" / "train" / "ulm"
    city.mkdir(parents=True)
    good = city / "ulm_000000_000019_gtFine_labelIds.png"
    bad = city / "ulm_000001_000019_gtFine_labelIds.png"
    Image.fromarray(np.full((H, W), 7, np.uint8)).save(good)
    Image.fromarray(np.full((H, W), 200, np.uint8)).save(bad)
    proc = convert(tmp_path, "--nproc", "1")
    assert proc.returncode == 1
    assert f"{bad}: label ids [200] are not Cityscapes labelIds" in proc.stderr
    assert "converted 1 (1 from labelIds), kept 0 already converted, failed 1" in proc.stdout


# --- the dataset -------------------------------------------------------------------------------


def test_train_pipeline_gives_matching_image_and_label_crops(converted):
    root, expected = converted
    cfg = small_config(root)
    dataset = build(cfg.train_dataloader.dataset)
    assert len(dataset) == 3 and len(dataset.metainfo["classes"]) == 19
    for index in range(len(dataset)):
        sample = dataset[index]
        image, label = sample["inputs"], sample["data_samples"].gt_sem_seg.data
        assert not image.dtype.is_floating_point and image.shape[0] == 3
        assert image.shape[1:] == label.shape[1:] == (16, 32)
        values = set(np.unique(label.numpy()).tolist())
        assert values <= set(range(19)) | {255}
    # a per-sample seed fixes the augmentation (SeededSampler), whatever ran before
    first, again = dataset[SeededIndex(0, 7)], dataset[SeededIndex(0, 7)]
    assert (first["inputs"] == again["inputs"]).all()
    # spawned DataLoader workers get the dataset pickled: its lazily defined class too
    copy = pickle.loads(pickle.dumps(dataset))
    assert (copy[SeededIndex(0, 7)]["inputs"] == first["inputs"]).all()
    # the shipped loader settings (SeededSampler, mmengine's pseudo_collate) as the runner builds
    from hpff_dist.engine.mmengine_runner import Runner

    loader_cfg = {**cfg.train_dataloader, "num_workers": 0, "persistent_workers": False}
    with DefaultScope.overwrite_default_scope("hpff_dist"):
        batch = next(iter(Runner.build_dataloader(loader_cfg, seed=0)))
    assert [tuple(x.shape) for x in batch["inputs"]] == [(3, 16, 32)] * 2

    val = build(cfg.val_dataloader.dataset)
    sample = val[0]
    np.testing.assert_array_equal(
        sample["data_samples"].gt_sem_seg.data[0].numpy(), expected["frankfurt_000000_000019"]
    )
    assert sample["inputs"].shape == (3, H, W)

    tta = build({**cfg.val_dataloader.dataset, "pipeline": cfg.tta_pipeline})
    views = tta[0]
    assert len(views["inputs"]) == len(views["data_samples"]) == 12  # 6 scales x 2 flips
    assert {tuple(v.shape[1:]) for v in views["inputs"][::2]} == {
        (round(H * r), round(W * r)) for r in cfg.tta_ratios
    }


def test_config_arguments_are_checked_against_mmseg_transforms(converted):
    """Our config check resolves the scoped transform names to mmseg's classes (an unscoped
    'RandomCrop' would be torchvision's): the shipped arguments pass, a misspelt one does not."""
    from hpff_dist.engine.signatures import ConfigArgumentError, check_arguments

    root, _ = converted
    cfg = small_config(root)
    build(cfg.train_dataloader.dataset)  # mmseg imported (with the mmcv.ops stand-in)
    check_arguments(cfg)
    cfg.merge_from_dict({"train_dataloader.dataset.pipeline.3.cat_max_ration": 0.5})
    with pytest.raises(ConfigArgumentError, match="pipeline.3.cat_max_ration.*cat_max_ratio"):
        check_arguments(cfg)


def test_missing_folders_name_the_command(converted, tmp_path):
    root, _ = converted
    cfg = small_config(root).train_dataloader.dataset
    with pytest.raises(CityscapesLayoutError, match="unzip leftImg8bit_trainvaltest.zip"):
        build({**cfg, "data_root": str(tmp_path)})
    (tmp_path / "leftImg8bit" / "train").mkdir(parents=True)
    with pytest.raises(CityscapesLayoutError) as err:
        build({**cfg, "data_root": str(tmp_path)})
    assert f"{tmp_path / 'gtFine' / 'train'} is missing" in str(err.value)
    assert f"unzip gtFine_trainvaltest.zip -d {tmp_path}" in str(err.value)
    assert f"python tools/convert_cityscapes.py {tmp_path}" in str(err.value)


def test_missing_train_ids_name_the_conversion(tmp_path):
    write_tree(tmp_path)  # not converted
    cfg = small_config(tmp_path).train_dataloader.dataset
    with pytest.raises(CityscapesLayoutError) as err:
        build(cfg)
    message = str(err.value)
    assert "3 of 3 label files are missing" in message
    assert f"Run python tools/convert_cityscapes.py {tmp_path}" in message


def test_a_label_value_outside_the_train_ids_names_the_file(converted, tmp_path):
    root, expected = converted
    stem = "aachen_000000_000019"
    bad = tmp_path / "gtFine" / "train" / "aachen" / f"{stem}_gtFine_labelTrainIds.png"
    bad.parent.mkdir(parents=True)
    labels = expected[stem].copy()
    labels[0, 0] = 26  # a labelId (car), not a trainId
    Image.fromarray(labels).save(bad)
    (tmp_path / "leftImg8bit" / "train" / "aachen").mkdir(parents=True)
    image = root / "leftImg8bit" / "train" / "aachen" / f"{stem}_leftImg8bit.png"
    os.symlink(image, tmp_path / "leftImg8bit" / "train" / "aachen" / image.name)
    dataset = build(small_config(tmp_path).train_dataloader.dataset)
    with pytest.raises(CorruptDataError) as err:
        dataset[0]
    assert f"{bad}: label values 26 are outside 0-18 and 255" in str(err.value)
    assert f"python tools/convert_cityscapes.py {tmp_path}" in str(err.value)
    # also where LoadAnnotations sits inside TestTimeAug
    cfg = small_config(tmp_path)
    tta = build({**cfg.train_dataloader.dataset, "pipeline": cfg.tta_pipeline})
    with pytest.raises(CorruptDataError, match="label values 26"):
        tta[0]
