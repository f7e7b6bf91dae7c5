"""A pipelined run from the shipped config through ``tools/train.py`` on 2 processes (torchrun,
``--launcher pytorch``, 2 stages), on real Fashion-MNIST: SIGKILLed mid-epoch and resumed, it
ends bitwise where the uninterrupted run ends (every stage's weights and optimizer state); its
checkpoint merges into the whole model (``tools/convert_checkpoint.py``), which a single
process evaluates to the pipelined run's own test metrics."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hpff_dist import compat
from hpff_dist.engine.checkpoint import stage_state_files

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs/fashion_mnist/resnet32_k16_dgl_hpff_pipe2.py"
SINGLE = REPO / "configs/fashion_mnist/resnet32_k16_dgl_hpff.py"
#: 256 images at batch 64: 4 iterations an epoch, 2 epochs, checkpoints every 2 iterations
OPTIONS = [
    "train_dataloader.dataset.subset=256",
    "train_dataloader.batch_size=64",
    "val_dataloader.dataset.subset=100",
    "test_dataloader.dataset.subset=100",
    "train_cfg.max_epochs=2",
    "train_cfg.val_interval=2",
    "param_scheduler.1.end=2",
    "param_scheduler.1.T_max=2",
    "default_hooks.checkpoint.by_epoch=False",
    "default_hooks.checkpoint.interval=2",
    "default_hooks.checkpoint.max_keep_ckpts=10",
    # fixed, so the two runs' stage files hold the same modules (a measured balance can differ
    # between runs; a resumed run takes its checkpoint's, tested below)
    "strategy.pipeline.stage_modules=[7,8]",
]
METRIC = re.compile(r"Epoch\(test\) \[\d+/\d+\]\s+top1: ([\d.]+)\s+top5: ([\d.]+)")


def _child_config(tmp_path: Path, kill_at: int | None) -> Path:
    path = tmp_path / f"kill_at_{kill_at}.py"
    path.write_text(
        f"_base_ = [{str(CONFIG)!r}]\n"
        "custom_imports = dict(imports=['kill_at'], allow_failed_imports=False)\n"
        f"custom_hooks = [dict(type='PreemptionHook'), dict(type='KillAt', iteration={kill_at})]\n"
    )
    return path


def _torchrun(config: Path, work: Path, *extra: str, options=()) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests/dist_scripts"), "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "tools/train.py", str(config), "--launcher", "pytorch", "--work-dir", str(work),
           *extra, "--cfg-options", *OPTIONS, *options]  # fmt: skip
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


def _stage_states(checkpoint: Path) -> list[dict]:
    compat.apply_all()
    return [torch.load(f, map_location="cpu") for f in stage_state_files(str(checkpoint))]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pipeline_train")
    straight = _torchrun(_child_config(tmp, None), tmp / "straight")
    assert straight.returncode == 0, (straight.stdout + straight.stderr)[-4000:]
    cut = tmp / "cut"
    killed = _torchrun(_child_config(tmp, 5), cut, "--no-test")  # epoch 2, after iter_4.pth
    assert killed.returncode != 0, (killed.stdout + killed.stderr)[-3000:]
    # Asked for other stages, the resumed run cuts the model where its checkpoint's run did.
    resumed = _torchrun(
        _child_config(tmp, None), cut, "--resume", "--no-test",
        options=["strategy.pipeline.stage_modules=[8,7]"],
    )  # fmt: skip
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-4000:]
    return tmp, straight, resumed


def test_killed_and_resumed_equals_uninterrupted(runs):
    tmp, _, resumed = runs
    log = resumed.stdout + resumed.stderr
    assert "resumed epoch: 0, iter: 4" in log  # after iter_4.pth
    assert "strategy.pipeline.stage_modules: [8, 7] -> [7, 8] (load_from/resume" in log
    a, b = _stage_states(tmp / "straight/iter_8.pth"), _stage_states(tmp / "cut/iter_8.pth")
    assert len(a) == len(b) == 2  # one module-state file per stage
    assert set(a[0]["module"]).isdisjoint(a[1]["module"])
    for sa, sb in zip(a, b):
        assert sa["module"].keys() == sb["module"].keys()
        differing = [k for k in sa["module"] if not torch.equal(sa["module"][k], sb["module"][k])]
        assert not differing, differing[:5]
        opt_a, opt_b = sa["optimizer"]["state"], sb["optimizer"]["state"]
        assert opt_a.keys() == opt_b.keys() and opt_a
        for key in opt_a:
            for name, value in opt_a[key].items():
                assert torch.equal(value, opt_b[key][name]), (key, name)


def test_merged_stages_evaluate_to_the_pipelines_own_metrics(runs, tmp_path):
    tmp, straight, _ = runs
    pipelined = METRIC.findall(straight.stdout + straight.stderr)
    assert pipelined, (straight.stdout + straight.stderr)[-3000:]
    merged = tmp_path / "merged.pth"
    proc = subprocess.run(
        [sys.executable, "tools/convert_checkpoint.py", str(tmp / "straight/iter_8.pth"), str(merged)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["pipeline_stages"] == 2 and summary["iter"] == 8
    proc = subprocess.run(
        [sys.executable, "tools/test.py", str(SINGLE), str(merged), "--work-dir",
         str(tmp_path / "test"), "--cfg-options", "test_dataloader.dataset.subset=100"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = METRIC.findall(proc.stdout + proc.stderr)
    assert single and single[-1] == pipelined[-1], (single, pipelined)
