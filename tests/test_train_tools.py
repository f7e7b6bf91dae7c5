"""tools/train.py and tools/test.py end to end on a Fashion-MNIST subset (CPU, ~30 s)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs/fashion_mnist/resnet32_e2e.py"


def _run(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    out = subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )
    assert out.returncode == 0, (out.stdout[-3000:], out.stderr[-3000:])
    return out


def test_short_training_beats_chance_then_test_tool_reproduces_it(tmp_path):
    work = tmp_path / "work"
    overrides = [
        "model.backbone.depth=8",
        "train_dataloader.dataset.subset=3000",
        "val_dataloader.dataset.subset=1000",
        "test_dataloader.dataset.subset=1000",
        "train_cfg.max_epochs=2",
        "train_cfg.val_interval=2",
        "default_hooks.logger.interval=10",
    ]
    out = _run(
        ["tools/train.py", str(CONFIG), "--work-dir", str(work), "--cfg-options", *overrides]
    )
    metrics = json.loads((work / "test_metrics.json").read_text())
    assert metrics["top1"] > 30.0, metrics  # chance is 10%; 2 short epochs reach ~40%
    assert "| top1" in out.stdout  # the printed table
    log = "\n".join(p.read_text() for p in work.rglob("*.log"))
    for field in ("eta:", "loss_e2e:", "lr:", "img_per_s:", "rss_mb:"):
        assert field in log, field

    ckpt = work / "epoch_2.pth"
    assert ckpt.exists()
    result = tmp_path / "results.json"
    _run(
        [
            "tools/test.py",
            str(CONFIG),
            str(ckpt),
            "--out",
            str(result),
            "--work-dir",
            str(tmp_path / "t"),
            "--cfg-options",
            "model.backbone.depth=8",
            "test_dataloader.dataset.subset=1000",
        ]
    )
    tested = json.loads(result.read_text())
    assert abs(tested["top1"] - metrics["top1"]) < 1e-6
    assert tested["top5"] >= tested["top1"]


def test_train_tool_rejects_typo_in_overrides(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "tools/train.py",
            str(CONFIG),
            "--work-dir",
            str(tmp_path),
            "--cfg-options",
            "trian_cfg.max_epochs=1",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode != 0
    assert "did you mean 'train_cfg'" in out.stderr


@pytest.mark.parametrize("method", ["k16_dgl", "k16_infopro", "k16_dgl_hpff", "k16_infopro_hpff"])
def test_every_method_trains_and_tests_through_the_tools(tmp_path, method):
    config = REPO / f"configs/fashion_mnist/resnet32_{method}.py"
    work = tmp_path / "work"
    subset = [
        "train_dataloader.dataset.subset=64",
        "train_dataloader.batch_size=32",
        "val_dataloader.dataset.subset=50",
        "test_dataloader.dataset.subset=50",
        "train_cfg.max_epochs=1",
        "default_hooks.logger.interval=1",
    ]
    _run(["tools/train.py", str(config), "--work-dir", str(work), "--cfg-options", *subset])
    log = "\n".join(p.read_text() for p in work.rglob("*.log"))
    assert "loss_ind:" in log
    assert ("loss_cas:" in log) == method.endswith("hpff")  # the cascade level is HiLo's
    result = tmp_path / "results.json"
    _run(
        [
            "tools/test.py",
            str(config),
            str(work / "epoch_1.pth"),
            "--out",
            str(result),
            "--work-dir",
            str(tmp_path / "t"),
            "--cfg-options",
            "test_dataloader.dataset.subset=50",
        ]
    )
    # the test tool loads the checkpoint: same numbers as the end-of-training evaluation
    assert json.loads(result.read_text()) == json.loads((work / "test_metrics.json").read_text())


def test_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path):
    import torch

    from hpff_dist import compat

    compat.apply_all()  # our checkpoints load under torch's weights_only default

    config = tmp_path / "resume.py"
    config.write_text(
        f"_base_ = ['{REPO}/configs/fashion_mnist/resnet32_e2e.py']\n"
        "model = dict(arch=None, backbone=dict(depth=8), method=dict(method='dgl_hpff', k=3,"
        " aux_net='0c2f'))\n"
        "_plain = [dict(type='Pad', padding=2), dict(type='ToFloatImage')]  # no random augmentation\n"
        "train_dataloader = dict(batch_size=64, num_workers=0, persistent_workers=False,"
        " dataset=dict(subset=256, pipeline=_plain))\n"
    )
    common = [
        "--no-test",
        "--cfg-options",
        "val_dataloader.dataset.subset=50",
        "val_dataloader.num_workers=0",
        "val_dataloader.persistent_workers=False",
    ]
    _run(["tools/train.py", str(config), "--work-dir", str(tmp_path / "straight"), *common])
    _run(
        [
            "tools/train.py",
            str(config),
            "--work-dir",
            str(tmp_path / "cut"),
            *common,
            "train_cfg.max_epochs=1",
        ]
    )
    _run(["tools/train.py", str(config), "--work-dir", str(tmp_path / "cut"), "--resume", *common])

    def params(work):
        return torch.load(tmp_path / work / "epoch_2.pth", map_location="cpu")["state_dict"]

    straight, resumed = params("straight"), params("cut")
    assert straight.keys() == resumed.keys()
    moved = (straight["learner.net.stem.0.weight"] - params_at_epoch_1(tmp_path)).abs().max()
    assert moved > 1e-4  # the second epoch trained
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key


def params_at_epoch_1(tmp_path):
    import torch

    from hpff_dist import compat

    compat.apply_all()
    ckpt = torch.load(tmp_path / "cut" / "epoch_1.pth", map_location="cpu")
    return ckpt["state_dict"]["learner.net.stem.0.weight"]
