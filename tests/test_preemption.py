"""Preemption loses nothing: a signal checkpoints the iteration and exits 75, the resumed run
ends bitwise where the uninterrupted one does; a death mid-write leaves no checkpoint behind.

Real runs of ``tools/train.py`` (one process, and two ranks under torchrun with DeepSpeed
ZeRO-2) on a Fashion-MNIST subset; the signal is a real ``os.kill`` from inside the run
(``tests/dist_scripts/kill_at.py``), on one rank only in the distributed case. The SLURM side
(sbatch, scancel, requeue) is in ``tests/test_slurm.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hpff_dist import compat
from hpff_dist.engine.checkpoint import MODEL_STATES_FILE
from hpff_dist.engine.preemption import EXIT_PREEMPTED

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs/fashion_mnist/resnet32_e2e.py"
#: ResNet-8, 256 images at batch 64: 4 iterations an epoch, 2 epochs
OPTIONS = [
    "model.backbone.depth=8",
    "train_dataloader.dataset.subset=256",
    "train_dataloader.batch_size=64",
    "val_dataloader.dataset.subset=100",
]
HOOKS = "dict(type='ThroughputHook'), dict(type='LocalLossCurvesHook'), dict(type='PreemptionHook')"


def _config(tmp_path: Path, name: str, extra_hook: str = "") -> Path:
    path = tmp_path / f"{name}.py"
    path.write_text(
        f"_base_ = [{str(CONFIG)!r}]\n"
        "custom_imports = dict(imports=['kill_at'], allow_failed_imports=False)\n"
        f"custom_hooks = [{HOOKS}{', ' + extra_hook if extra_hook else ''}]\n"
    )
    return path


def _run(args: list[str], *options: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests/dist_scripts")}
    return subprocess.run(
        [*args, "--no-test", "--cfg-options", *OPTIONS, *options],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip


def _train(
    config: Path, work: Path, *extra: str, options: tuple = ()
) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "tools/train.py", str(config), "--work-dir", str(work), *extra]
    return _run(cmd, *options)


def _load(path: Path) -> dict:
    compat.apply_all()
    return torch.load(path, map_location="cpu")


def _assert_same_run(a: dict, b: dict) -> None:
    assert a["state_dict"].keys() == b["state_dict"].keys()
    differing = [k for k, v in a["state_dict"].items() if not torch.equal(v, b["state_dict"][k])]
    assert not differing, differing[:10]
    for key, state in a["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][key][name]), (key, name)


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("straight")
    out = _train(_config(work, "plain"), work)
    assert out.returncode == 0, out.stderr[-3000:]
    return work


@pytest.mark.parametrize("signal_name", ["SIGUSR1", "SIGTERM"])
def test_a_signal_checkpoints_the_iteration_and_the_resumed_run_ends_the_same(
    straight, tmp_path, signal_name
):
    work = tmp_path / "work"
    hook = f"dict(type='SignalAt', iteration=6, signal='{signal_name}')"  # epoch 2, batch 2
    out = _train(_config(tmp_path, "signalled", hook), work)
    assert out.returncode == EXIT_PREEMPTED, out.stderr[-3000:]
    log = out.stdout + out.stderr
    assert f"{signal_name}: stopped after iteration 6 (epoch 2, batch 2 of 4)" in log
    assert (work / "last_checkpoint").read_text().strip() == str(work / "iter_6.pth")
    assert not (work / "epoch_2.pth").exists()
    resumed = _train(_config(tmp_path, "plain"), work, "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = resumed.stdout + resumed.stderr
    assert "resumed epoch: 1, iter: 6" in log and "resuming epoch 1 at batch 2 of 4" in log
    _assert_same_run(_load(straight / "epoch_2.pth"), _load(work / "epoch_2.pth"))


def test_death_while_writing_a_checkpoint_leaves_the_previous_one_to_resume(straight, tmp_path):
    work = tmp_path / "work"
    every_2 = ("default_hooks.checkpoint.by_epoch=False", "default_hooks.checkpoint.interval=2")
    hook = "dict(type='DieWritingCheckpoint', iteration=4)"
    out = _train(_config(tmp_path, "dies", hook), work, options=every_2)
    assert out.returncode == -9, out.stderr[-3000:]
    assert (work / ".iter_4.pth.partial").is_file()  # the half-written bytes, hidden
    assert not (work / "iter_4.pth").exists()
    assert (work / "last_checkpoint").read_text().strip() == str(work / "iter_2.pth")
    resumed = _train(_config(tmp_path, "plain"), work, "--resume", options=every_2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed epoch: 0, iter: 2" in resumed.stdout + resumed.stderr
    _assert_same_run(_load(straight / "epoch_2.pth"), _load(work / "iter_8.pth"))


def _torchrun(config: Path, work: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "tools/train.py", str(config), "--launcher", "pytorch", "--work-dir", str(work), *extra]  # fmt: skip
    zero2 = ("strategy.zero_optimization.stage=2", "train_dataloader.batch_size=32")
    return _run(cmd, *zero2)


def test_a_signal_on_one_rank_stops_every_rank_at_the_same_iteration(tmp_path):
    plain = _config(tmp_path, "plain")
    straight = _torchrun(plain, tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    work = tmp_path / "cut"
    hook = "dict(type='SignalAt', iteration=3, signal='SIGTERM', rank=1)"
    out = _torchrun(_config(tmp_path, "signalled", hook), work)
    assert out.returncode != 0
    log = out.stdout + out.stderr
    assert f"exitcode  : {EXIT_PREEMPTED}" in log  # torchrun's summary of the ranks
    assert "a signal on another rank: stopped after iteration 3" in log  # rank 0 followed
    assert (work / "iter_3.pth" / MODEL_STATES_FILE).is_file()
    assert not [p for p in os.listdir(work) if p.endswith(".partial")]
    resumed = _torchrun(plain, work, "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = _load(tmp_path / "straight" / "epoch_2.pth" / MODEL_STATES_FILE)["module"]
    b = _load(work / "epoch_2.pth" / MODEL_STATES_FILE)["module"]
    assert a.keys() == b.keys()
    # parameters bitwise; BatchNorm running statistics were averaged over ranks at one more
    # save (the preemption's): the same linear map, rounded once more (docs/distributed.md)
    running = [k for k in a if "running_" in k]
    assert running and all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-7) for k in running)
    exact = [k for k in a if k not in running]
    assert all(torch.equal(a[k], b[k]) for k in exact), [
        k for k in exact if not torch.equal(a[k], b[k])
    ]
