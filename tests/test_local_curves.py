"""Per-module loss curves: the hook's averages, its checkpoint round trip, and a real run that
leaves local_curves.png, TensorBoard events and the run summary."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from conftest import REPO

from hpff_dist.engine.local_curves import LocalLossCurvesHook, metric_series, plot_local_curves


class _Visualizer:
    def __init__(self) -> None:
        self.calls: list[tuple[dict, int]] = []

    def add_scalars(self, scalars: dict, step: int) -> None:
        self.calls.append((scalars, step))


def _runner(tmp_path, model, resume=True):
    return SimpleNamespace(
        model=model,
        iter=0,
        epoch=0,
        rank=0,
        work_dir=str(tmp_path),
        visualizer=_Visualizer(),
        _resume=resume,
    )


def _feed(hook, runner, model, steps):
    for i, (ind, cas) in enumerate(steps):
        model.local_losses = {"m01/ind": torch.tensor(ind), "m01/cas": torch.tensor(cas)}
        runner.iter = i
        hook.after_train_iter(runner, i)
    runner.iter = len(steps)  # mmengine has counted the last iteration when training ends
    hook.after_train(runner)


def test_hook_averages_each_module_and_level_over_its_interval(tmp_path):
    model = SimpleNamespace(local_losses={})
    runner = _runner(tmp_path, model)
    hook = LocalLossCurvesHook(interval=3, plot=False)
    # Three steps make one point; the last two (at least half a window) one more at the end.
    _feed(hook, runner, model, [(2.0, 1.0), (1.0, 0.5), (0.0, 3.0), (4.0, 4.0), (2.0, 0.0)])
    assert hook.losses == [
        {"iter": 3, "epoch": 0, "values": {"m01/cas": 1.5, "m01/ind": 1.0}},
        {"iter": 5, "epoch": 0, "values": {"m01/cas": 2.0, "m01/ind": 3.0}},
    ]  # the last point sits at the last step (5), not one past it
    assert runner.visualizer.calls[0] == ({"local/m01/cas": 1.5, "local/m01/ind": 1.0}, 3)
    saved = json.loads((tmp_path / "local_curves.json").read_text())
    assert saved["losses"] == hook.losses


def test_hook_drops_a_remainder_under_half_a_window(tmp_path):
    model = SimpleNamespace(local_losses={})
    runner = _runner(tmp_path, model)
    hook = LocalLossCurvesHook(interval=4, plot=False)
    _feed(hook, runner, model, [(1.0, 1.0)] * 5)  # 4 + a remainder of 1
    assert [p["iter"] for p in hook.losses] == [4]


def test_hook_history_survives_a_checkpoint(tmp_path):
    model = SimpleNamespace(local_losses={"m00/cas": torch.tensor(0.7)})
    runner = _runner(tmp_path, model)
    hook = LocalLossCurvesHook(interval=1, plot=False)
    hook.after_train_iter(runner, 0)
    hook.after_val_epoch(runner, {"top1": 55.0, "top5": 90.0})
    checkpoint: dict = {"meta": {"epoch": 1}}
    hook.before_save_checkpoint(runner, checkpoint)
    blob = tmp_path / "ckpt.pth"
    torch.save(checkpoint, blob)
    resumed = LocalLossCurvesHook(interval=1, plot=False)
    resumed.after_load_checkpoint(runner, torch.load(blob, weights_only=True))
    assert resumed.losses == hook.losses and resumed.metrics == hook.metrics
    assert resumed.metrics[0]["values"] == {"top1": 55.0, "top5": 90.0}
    # load_from without resume: a new run, with curves of its own.
    fresh = LocalLossCurvesHook(interval=1, plot=False)
    fresh.after_load_checkpoint(_runner(tmp_path, model, resume=False), checkpoint)
    assert fresh.losses == [] and fresh.metrics == []


def test_resume_keeps_the_validation_written_after_the_checkpoint(tmp_path):
    """Checkpoints are saved before their epoch's validation: that point comes back from the
    work dir's local_curves.json, later ones (past the checkpoint) do not."""
    model = SimpleNamespace(local_losses={"m00/cas": torch.tensor(0.7)})
    runner = _runner(tmp_path, model)
    hook = LocalLossCurvesHook(interval=1, plot=False)
    runner.iter = 0
    hook.after_train_iter(runner, 0)
    checkpoint: dict = {"meta": {"epoch": 1, "iter": 1}}
    hook.before_save_checkpoint(runner, checkpoint)
    runner.iter, runner.epoch = 1, 1
    hook.after_val_epoch(runner, {"top1": 61.0})  # epoch 1's validation, after the save
    runner.iter, runner.epoch = 2, 2
    hook.after_val_epoch(runner, {"top1": 70.0})  # a later epoch the resumed run redoes
    resumed = LocalLossCurvesHook(interval=1, plot=False)
    resumed.after_load_checkpoint(runner, checkpoint)
    assert [p["values"]["top1"] for p in resumed.metrics] == [61.0]


def test_hook_rejects_a_bad_interval():
    with pytest.raises(ValueError, match="interval must be >= 1"):
        LocalLossCurvesHook(interval=0)


def test_plot_has_a_panel_per_level_and_one_for_metrics(tmp_path):
    history = {
        "losses": [
            {"iter": i, "epoch": 0, "values": {"m00/cas": 2.0 / i, "m01/probe": 1.0 / i}}
            for i in (1, 2, 3)
        ],
        "metrics": [{"iter": 3, "epoch": 1, "values": {"top1": 60.0}}],
    }
    path = tmp_path / "curves.png"
    plot_local_curves(history, str(path))
    from PIL import Image

    with Image.open(path) as image:
        width, height = image.size
    assert width > 2.5 * height  # three panels side by side


def test_plotted_metrics_leave_out_per_class_values_and_follow_iterations():
    per_class = {"mIoU": 30.0, "aAcc": 80.0, "IoU.Coat": 5.0, "Acc.Coat": 9.0}
    by_epoch = [{"iter": 10 * e, "epoch": e, "values": per_class} for e in (1, 2)]
    assert metric_series(by_epoch) == (
        "epoch",
        {"aAcc": [(1, 80.0), (2, 80.0)], "mIoU": [(1, 30.0), (2, 30.0)]},
    )
    # an iteration-based run validates twice within one pass over the data
    by_iter = [{"iter": i, "epoch": 0, "values": {"mIoU": i / 10}} for i in (200, 400)]
    assert metric_series(by_iter) == ("iteration", {"mIoU": [(200, 20.0), (400, 40.0)]})


def test_training_run_leaves_curves_tensorboard_and_summary(tmp_path):
    work = tmp_path / "work"
    overrides = [
        "model.backbone.depth=8",
        "model.method.k=3",
        "model.arch=None",
        "train_dataloader.dataset.subset=640",
        "val_dataloader.dataset.subset=500",
        "test_dataloader.dataset.subset=500",
        "train_cfg.max_epochs=2",
        "train_cfg.val_interval=1",
        "custom_hooks.1.interval=2",
    ]
    config = REPO / "configs/fashion_mnist/resnet32_k16_dgl_hpff.py"
    cmd = [sys.executable, "tools/train.py", str(config), "--work-dir", str(work)]
    out = subprocess.run(
        [*cmd, "--cfg-options", *overrides],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]

    curves = json.loads((work / "local_curves.json").read_text())
    # K=3 dgl_hpff: module 0 has no head of its own (it learns through module 1's cascade
    # head); modules 1 and 2 have both levels (module 2's are the net's own classifier).
    keys = set(curves["losses"][-1]["values"])
    assert keys == {"m01/ind", "m01/cas", "m02/ind", "m02/cas"}
    assert len(curves["losses"]) == 5  # 2 epochs x 5 iterations / interval 2
    assert all(v > 0 for p in curves["losses"] for v in p["values"].values())
    assert [p["epoch"] for p in curves["metrics"]] == [1, 2]
    assert (work / "local_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = work.rglob("events.out.tfevents.*")
    acc = EventAccumulator(str(events))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"local/m01/cas", "local/m02/ind", "top1", "lr"} <= tags, tags
    steps = [e.step for e in acc.Scalars("local/m01/cas")]
    assert steps == [p["iter"] for p in curves["losses"]]

    summary = json.loads((work / "summary.json").read_text())
    assert summary["method"] == "dgl_hpff" and summary["K"] == 3 and summary["epochs"] == 2
    test_metrics = json.loads((work / "test_metrics.json").read_text())
    assert summary["test top1"] == round(test_metrics["top1"], 2)
    assert (REPO / summary["checkpoint"]).resolve() == (work / "epoch_2.pth").resolve()
    assert "run summary" in out.stdout and "| checkpoint" in out.stdout
