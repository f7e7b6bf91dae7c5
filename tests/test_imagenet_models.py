"""ImageNet models: torchvision ResNets as BlockNetworks, split tables, and real-config training.

The BlockNetwork view must compute exactly torchvision's function (same logits), its block
coordinates must be the reference tables' ``(stage, index)``, and the experiment configs must
train from every loader backend. Everything runs on the CPU at 32x32 on tiny synthetic JPEGs
written in the real formats (an ImageFolder tree, webdataset shards with DALI indexes).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.registry import init_default_scope
from PIL import Image
from torch.utils.data import DataLoader

import hpff_dist.data  # noqa: F401  (registers datasets, samplers, collate functions)
import hpff_dist.models  # noqa: F401
from hpff_dist.data.imagenet.shards import make_split_shards, parse_shard_size
from hpff_dist.data.loader_builder import LazyDaliDataLoader, materialize_dataloaders
from hpff_dist.engine.config import load_config
from hpff_dist.engine.runner_factory import build_runner
from hpff_dist.local.split import SPLIT_TABLES, build_split_plan
from hpff_dist.models.imagenet_resnet import (
    PAPER_ARCHS,
    TorchvisionResNet,
    from_torchvision_state_dict,
)

REPO = Path(__file__).resolve().parents[1]
SIZE = 32
TRAIN_PER_CLASS = (3, 3, 2)  # 8 images: 2 batches of 4 -> a 2-iteration epoch
VAL_PER_CLASS = (2, 2, 2)
STAGE_DEPTHS = {
    "resnet101": (3, 4, 23, 3),
    "resnet152": (3, 8, 36, 3),
    "resnext101_32x8d": (3, 4, 23, 3),
}


# --- the BlockNetwork view of torchvision ---------------------------------------------------------


@pytest.mark.parametrize("arch", PAPER_ARCHS)
def test_block_view_gives_torchvision_logits(arch):
    """Load a torchvision net's weights (renamed) into ours: the same logits."""
    torch.manual_seed(0)
    reference = torchvision.models.get_model(arch, weights=None, num_classes=5).eval()
    net = TorchvisionResNet(arch, num_classes=5).eval()
    net.load_state_dict(from_torchvision_state_dict(reference.state_dict(), net.stage_depths))
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.equal(net(x), reference(x))
    assert net.stage_depths == STAGE_DEPTHS[arch]
    assert len(net.blocks) == len(net.block_ids) == sum(STAGE_DEPTHS[arch])


def test_block_ids_and_channels_match_torchvision_layers():
    reference = torchvision.models.resnet101(weights=None, num_classes=5)
    net = TorchvisionResNet.from_torchvision(reference, "resnet101")
    assert net.block_ids[:4] == [(1, 0), (1, 1), (1, 2), (2, 0)]
    for block, (stage, index) in zip(net.blocks, net.block_ids):
        assert block is getattr(reference, f"layer{stage}")[index]
    assert net.block_channels == [256] * 3 + [512] * 4 + [1024] * 23 + [2048] * 3
    x = net.stem(torch.randn(2, 3, SIZE, SIZE))
    with torch.no_grad():
        for block, width in zip(net.blocks, net.block_channels):
            x = block(x)
            assert x.shape[1] == width


def test_published_split_tables_cover_every_block():
    """Every (arch, K) table cuts our block list at the blocks the reference names."""
    for arch in PAPER_ARCHS:
        reference = torchvision.models.get_model(arch, weights=None, num_classes=5)
        net = TorchvisionResNet.from_torchvision(reference, arch)
        for k, table in SPLIT_TABLES[arch].items():
            plan = build_split_plan(arch, k, net.block_ids)
            assert plan.source == f"table:{arch}" and plan.num_modules == len(table)
            assert [b for mod in plan.modules for b in mod] == list(range(len(net.blocks)))
            for module, (stage, index) in zip(plan.modules, table):
                assert net.blocks[module[-1]] is getattr(reference, f"layer{stage}")[index]
        balanced = build_split_plan(arch, 2, net.block_ids)  # K=2: no published table
        assert balanced.source == "balanced"
        sizes = [len(m) for m in balanced.modules]
        assert sum(sizes) == len(net.blocks) and max(sizes) - min(sizes) <= 1


def test_zero_init_residual_and_unknown_arch():
    net = TorchvisionResNet("resnet101", num_classes=5, zero_init_residual=True)
    assert all(not b.bn3.weight.any() for b in net.blocks)
    assert all(b.bn3.weight.all() for b in TorchvisionResNet("resnet101").blocks)
    with pytest.raises(ValueError, match="unknown torchvision model"):
        TorchvisionResNet("resnet1001")
    with pytest.raises(TypeError, match="not a torchvision ResNet"):
        TorchvisionResNet("vit_b_16")


# --- the DALI loader object for mmengine ----------------------------------------------------------


def test_materialize_replaces_only_typed_loader_dicts(tmp_path):
    plain = dict(batch_size=2, dataset=dict(type="ImageNetFolder", root="x"))
    cfg = Config(
        dict(
            train_dataloader=dict(type="DaliImageNetLoader", root=str(tmp_path), batch_size=4),
            val_dataloader=plain,
            test_dataloader=None,
        )
    )
    materialize_dataloaders(cfg)
    loader = cfg.train_dataloader
    assert isinstance(loader, DataLoader) and isinstance(loader, LazyDaliDataLoader)
    assert loader.batch_size == 4 and loader.batch_sampler.batch_size == 4
    assert loader._built is None  # nothing built before the process group exists
    assert copy.deepcopy(cfg).train_dataloader is loader
    assert Config.fromstring(f"x = {loader!r}", ".py").x == dict(
        type="DaliImageNetLoader", batch_size=4, root=str(tmp_path)
    )
    assert cfg.val_dataloader == plain and cfg.test_dataloader is None
    materialize_dataloaders(cfg)  # idempotent
    assert cfg.train_dataloader is loader


def test_materialize_shares_one_loader_between_equal_val_and_test(tmp_path):
    spec = dict(type="DaliImageNetLoader", root=str(tmp_path), split="val", batch_size=4)
    cfg = Config(dict(train_dataloader=None, val_dataloader=dict(spec), test_dataloader=dict(spec)))
    materialize_dataloaders(cfg)
    assert cfg.val_dataloader is cfg.test_dataloader  # one DALI pipeline, not two


# --- 2-iteration training from each backend, through the real experiment config --------------------


def _write_tree(root: Path, split: str, per_class: tuple[int, ...], seed: int) -> None:
    rng = np.random.default_rng(seed)
    for c, n in enumerate(per_class):
        folder = root / split / f"n{c:08d}"
        folder.mkdir(parents=True)
        for i in range(n):
            h, w = (int(v) for v in rng.integers(36, 60, 2))
            small = (rng.random((6, 6, 3)) * 255).astype(np.uint8)
            Image.fromarray(small).resize((w, h), Image.BICUBIC).save(
                folder / f"n{c:08d}_{i}.JPEG", quality=90
            )


@pytest.fixture(scope="module")
def imagenet_data(tmp_path_factory) -> dict[str, Path]:
    tree = tmp_path_factory.mktemp("imagenet")
    _write_tree(tree, "train", TRAIN_PER_CLASS, seed=0)
    _write_tree(tree, "val", VAL_PER_CLASS, seed=1)
    shards = tmp_path_factory.mktemp("shards")
    make_split_shards(tree, shards, "train", parse_shard_size("3"), shuffle_seed=0, progress=False)
    make_split_shards(tree, shards, "val", parse_shard_size("4"), progress=False)
    return {"folder": tree, "webdataset": shards, "dali": shards}


class _Recorder(Hook):
    """Keeps the training batches' value range and the logged losses of every iteration."""

    def __init__(self) -> None:
        self.ranges: list[tuple[float, float]] = []
        self.losses: list[dict[str, float]] = []

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        images = data_batch[0]
        self.ranges.append((float(images.min()), float(images.max())))

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        self.losses.append({k: float(v) for k, v in outputs.items() if "loss" in k})


def _experiment_config(backend: str, root: Path, work_dir: Path) -> Config:
    """The real ResNet-101 infopro_hpff K=4 experiment, with the backend's dataset base swapped
    in (as a user would by editing ``_base_``) and only sizes shrunk."""
    cfg = load_config(
        str(REPO / "configs/imagenet/resnet101_k4_infopro_hpff.py"), work_dir=str(work_dir)
    )
    data = Config.fromfile(str(REPO / f"configs/_base_/datasets/imagenet_{backend}.py"))
    for key in ("train_dataloader", "val_dataloader", "test_dataloader"):
        cfg[key] = copy.deepcopy(data[key])
    options = {
        "model.num_classes": 3,
        "model.image_size": SIZE,
        "train_cfg.max_epochs": 1,
        "param_scheduler.0.end": 1,
        "param_scheduler.0.T_max": 1,
        "val_evaluator.topk": (1,),
        "experiment_name": f"imagenet_{backend}",
        "default_hooks.logger.interval": 1,
        "env_cfg.cudnn_benchmark": False,
    }
    for split, batch in (("train", 4), ("val", 3)):
        loader = f"{split}_dataloader"
        if backend == "dali":
            options.update(
                {
                    f"{loader}.root": str(root),
                    f"{loader}.image_size": SIZE,
                    f"{loader}.batch_size": batch,
                    f"{loader}.num_threads": 1,
                    f"{loader}.device": "cpu",
                }
            )
        else:
            options.update(
                {
                    f"{loader}.dataset.root": str(root),
                    f"{loader}.dataset.image_size": SIZE,
                    f"{loader}.batch_size": batch,
                    f"{loader}.num_workers": 0,
                    f"{loader}.persistent_workers": False,
                    f"{loader}.pin_memory": False,
                }
            )
    cfg.merge_from_dict(options)
    cfg.test_dataloader = cfg.val_dataloader
    return cfg


@pytest.mark.parametrize("backend", ["folder", "webdataset", "dali"])
def test_two_iterations_of_resnet101_k4_infopro_hpff(backend, imagenet_data, tmp_path):
    if backend == "dali":
        pytest.importorskip("nvidia.dali")
    init_default_scope("hpff_dist")
    cfg = _experiment_config(backend, imagenet_data[backend], tmp_path)
    assert cfg.model.method.method == "infopro_hpff" and cfg.model.method.k == 4
    materialize_dataloaders(cfg)
    runner = build_runner(cfg)
    recorder = _Recorder()
    runner.register_hook(recorder)
    model = runner.model
    assert model.learner.plan.source == "table:resnet101" and model.learner.plan.num_modules == 4
    before = {k: v.detach().clone() for k, v in model.named_parameters()}

    runner.train()

    assert runner.iter == 2 and len(recorder.losses) == 2
    for losses in recorder.losses:
        assert losses and all(math.isfinite(v) for v in losses.values()), losses
        assert losses["loss_cas"] > 0
    # loaders yield [0, 1] images: the model normalises (InfoPro reconstructs the raw image)
    assert all(0.0 <= lo and hi <= 1.0 for lo, hi in recorder.ranges), recorder.ranges
    after = dict(model.named_parameters())
    changed = {k for k, v in before.items() if not torch.equal(v, after[k])}
    for prefix in (
        "learner.net.stem.",
        "learner.net.blocks.0.",
        "learner.net.blocks.32.",
        "learner.net.head.fc.",
        "learner.heads.cas1.",
        "learner.heads.cas2.",
    ):
        assert any(k.startswith(prefix) for k in changed), f"{prefix} did not change"
    assert (tmp_path / "epoch_1.pth").is_file()
    state = torch.load(tmp_path / "epoch_1.pth", map_location="cpu", weights_only=False)
    assert torch.equal(
        state["state_dict"]["learner.net.head.fc.weight"],
        after["learner.net.head.fc.weight"].detach(),
    )
    dumped = Config.fromfile(str(tmp_path / "resnet101_k4_infopro_hpff.py"))
    if backend == "dali":
        assert dumped.train_dataloader.type == "DaliImageNetLoader"
