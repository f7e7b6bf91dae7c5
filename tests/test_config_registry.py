"""Config inheritance, overrides, key checks, and that the registry builds every type."""

from pathlib import Path

import pytest
import torch

from hpff_dist.engine.config import load_config
from hpff_dist.engine.resolve import resolve_config
from hpff_dist.registry import DATASETS, MODELS

REPO = Path(__file__).resolve().parents[1]

CONFIGS = sorted(p for p in (REPO / "configs").rglob("*.py") if "_base_" not in p.parts)


def test_base_inheritance_and_overrides():
    cfg = load_config(
        str(REPO / "configs/fashion_mnist/resnet32_e2e.py"),
        {"optim_wrapper.optimizer.lr": 0.05, "model.backbone.depth": 20},
    )
    assert cfg.model.type == "LocalClassifier"
    assert cfg.model.backbone == dict(
        type="CifarResNet", depth=20, in_channels=1
    )  # child + override
    assert cfg.optim_wrapper.optimizer.lr == 0.05
    assert cfg.optim_wrapper.optimizer.nesterov is True  # inherited from the schedule base
    run, _ = resolve_config(cfg)  # the resolution moves the dataset normalisation into the model
    assert run.model.data_preprocessor.mean == [0.2860]
    assert cfg.work_dir.endswith("resnet32_e2e")


def test_stl10_schedule_inherits_and_overrides_lr():
    cfg = load_config(str(REPO / "configs/_base_/schedules/stl10_400e.py"))
    assert cfg.optim_wrapper.optimizer.lr == 0.1
    assert cfg.optim_wrapper.optimizer.momentum == 0.9


def test_unknown_top_level_key_is_an_error(tmp_path):
    bad = tmp_path / "typo.py"
    bad.write_text(
        f"_base_ = ['{REPO}/configs/fashion_mnist/resnet32_e2e.py']\n"
        "trian_dataloader = dict(batch_size=4)\n"
    )
    with pytest.raises(KeyError, match="did you mean 'train_dataloader'"):
        load_config(str(bad))
    with pytest.raises(KeyError, match="optim_wraper"):
        load_config(str(REPO / "configs/fashion_mnist/resnet32_e2e.py"), {"optim_wraper.lr": 1})


def test_malformed_config_and_missing_file(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("model = dict(type='LocalClassifier'\n")
    with pytest.raises(SyntaxError):
        load_config(str(broken))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config(str(tmp_path / "nope.py"))


def test_unknown_model_type_names_the_type():
    with pytest.raises(KeyError, match="ResNot32"):
        MODELS.build(dict(type="LocalClassifier", backbone=dict(type="ResNot32")))


@pytest.mark.parametrize("depth", [32, 110])
def test_builds_cifar_resnets_with_paper_block_counts(depth):
    model = MODELS.build(
        dict(type="LocalClassifier", backbone=dict(type="CifarResNet", depth=depth))
    )
    net = model.net
    assert len(net.blocks) == (depth - 2) // 2
    assert net.block_ids[0] == (1, 0) and net.block_ids[-1] == (3, (depth - 2) // 6 - 1)
    assert net.block_channels[0] == 16 and net.block_channels[-1] == 64
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_bad_depth_is_a_clear_error():
    with pytest.raises(ValueError, match="6n\\+2"):
        MODELS.build(dict(type="CifarResNet", depth=33))


def test_builds_every_dataset_type(cifar10_root, svhn_root, stl10_root):
    specs = {
        "CIFAR10": dict(root=str(cifar10_root), n=100),
        "SVHN": dict(root=str(svhn_root), n=30),
        "STL10": dict(root=str(stl10_root), n=12),
    }
    for name, spec in specs.items():
        ds = DATASETS.build(
            dict(
                type=name,
                root=spec["root"],
                split="train",
                verify_checksums=False,
                pipeline=[dict(type="ToFloatImage")],
            )
        )
        image, label = ds[0]
        assert len(ds) == spec["n"], name
        assert image.dtype == torch.float32 and 0 <= float(image.min()) <= float(image.max()) <= 1
        assert 0 <= label < 10
    fm = DATASETS.build(dict(type="FashionMNIST", split="test", subset=5))
    assert len(fm) == 5


def test_paper_augmentations_shape(cifar10_root, stl10_root):
    cfg = load_config(str(REPO / "configs/_base_/datasets/cifar10.py"))
    pipeline = cfg.train_dataloader.dataset.pipeline
    ds = DATASETS.build(
        dict(type="CIFAR10", root=str(cifar10_root), pipeline=pipeline, verify_checksums=False)
    )
    assert ds[0][0].shape == (3, 32, 32)
    cfg = load_config(str(REPO / "configs/_base_/datasets/stl10.py"))
    ds = DATASETS.build(
        dict(
            type="STL10",
            root=str(stl10_root),
            pipeline=cfg.train_dataloader.dataset.pipeline,
            verify_checksums=False,
        )
    )
    assert ds[0][0].shape == (3, 96, 96)


@pytest.mark.parametrize("name", ["CIFAR10", "SVHN", "STL10"])
def test_missing_dataset_folder_says_what_to_put_where(tmp_path, name):
    with pytest.raises(FileNotFoundError, match="not found under data root") as err:
        DATASETS.build(dict(type=name, root=str(tmp_path / "empty"), split="train"))
    assert "--data-root" in str(err.value)


def test_corrupted_download_is_caught_by_checksums(cifar10_root):
    with pytest.raises(RuntimeError, match="corrupted"):
        DATASETS.build(dict(type="CIFAR10", root=str(cifar10_root)))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(Path(p).relative_to(REPO / "configs")))
def test_every_experiment_config_loads(path):
    cfg = load_config(str(path))
    assert "model" in cfg and "train_dataloader" in cfg


@pytest.mark.parametrize(
    ("config", "where"),
    [("configs/cifar10/resnet32_e2e.py", "dataset"), ("configs/imagenet/resnet101_e2e.py", None)],
)
def test_data_root_reaches_all_three_loaders(config, where):
    cfg = load_config(str(REPO / config), data_root="/data/here")
    for key in ("train_dataloader", "val_dataloader", "test_dataloader"):
        loader = cfg[key]
        assert (loader[where] if where else loader)["root"] == "/data/here", key
