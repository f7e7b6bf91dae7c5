"""Exact resume by construction: a shipped config, persistent workers, SIGKILL mid-epoch.

Augmentations are a function of (seed, epoch, sample index) (``hpff_dist.data.sample_seeds``),
so a run killed in epoch 2 and in epoch 3 and resumed each time ends bitwise where the
uninterrupted run does, and the batches do not depend on the number of workers.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from checkpoint_compare import assert_checkpoints_bitwise_equal

from hpff_dist import compat
from hpff_dist.data.loader_builder import build_dataloader, with_loader_args
from hpff_dist.data.sample_seeds import SeededIndex, SeededSampler, sample_seed, seeded_randomness
from hpff_dist.engine.config import load_config

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs/fashion_mnist/resnet32_k16_dgl_hpff.py"
#: 256 images at batch 64: 4 iterations an epoch, 3 epochs; checkpoints every 2 iterations
OPTIONS = [
    "train_dataloader.dataset.subset=256",
    "train_dataloader.batch_size=64",
    "val_dataloader.dataset.subset=100",
    "train_cfg.max_epochs=3",
    "default_hooks.checkpoint.by_epoch=False",
    "default_hooks.checkpoint.interval=2",
    "default_hooks.checkpoint.max_keep_ckpts=10",
]


def _child_config(tmp_path: Path, kill_at: int | None) -> Path:
    """The shipped config plus a hook that SIGKILLs the run after iteration ``kill_at``."""
    path = tmp_path / f"kill_at_{kill_at}.py"
    path.write_text(
        f"_base_ = [{str(CONFIG)!r}]\n"
        "custom_imports = dict(imports=['kill_at'], allow_failed_imports=False)\n"
        "custom_hooks = [dict(type='ThroughputHook'), dict(type='LocalLossCurvesHook', "
        f"interval=25), dict(type='PreemptionHook'), dict(type='KillAt', iteration={kill_at})]\n"
    )
    return path


def _train(config: Path, work: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests/dist_scripts")}
    return subprocess.run(
        [sys.executable, "tools/train.py", str(config), "--work-dir", str(work), "--no-test",
         *extra, "--cfg-options", *OPTIONS],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip


def test_sigkilled_twice_and_resumed_equals_uninterrupted(tmp_path):
    straight = _train(_child_config(tmp_path, None), tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    cut = tmp_path / "cut"
    first = _train(_child_config(tmp_path, 7), cut)  # killed in epoch 2, after iter_6.pth
    assert first.returncode == -9, first.stderr[-3000:]
    second = _train(_child_config(tmp_path, 11), cut, "--resume")  # epoch 3, after iter_10
    assert second.returncode == -9, second.stderr[-3000:]
    log = second.stdout + second.stderr
    assert "resuming epoch 1 at batch 2 of 4 (the sampler starts there)" in log
    third = _train(_child_config(tmp_path, None), cut, "--resume")
    assert third.returncode == 0, third.stderr[-3000:]
    assert "resuming epoch 2 at batch 2 of 4" in third.stdout + third.stderr

    compat.apply_all()
    a = torch.load(tmp_path / "straight/iter_12.pth", map_location="cpu")
    b = torch.load(cut / "iter_12.pth", map_location="cpu")
    assert_checkpoints_bitwise_equal(a, b)


def _epochs_of_batches(num_workers: int, epochs: int = 2) -> list[list[torch.Tensor]]:
    cfg = load_config(str(CONFIG))
    loader_cfg = with_loader_args(
        cfg.train_dataloader, num_workers=num_workers, subset=48, batch_size=16
    )
    loader = build_dataloader(loader_cfg, seed=0)
    out = []
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        out.append([images for images, _ in loader])
    return out


def test_batches_do_not_depend_on_workers_and_differ_between_epochs():
    reference = _epochs_of_batches(0)
    for workers in (2, 4):
        other = _epochs_of_batches(workers)
        for epoch, (ours, theirs) in enumerate(zip(reference, other)):
            assert all(torch.equal(x, y) for x, y in zip(ours, theirs)), (workers, epoch)
    # the same images in both epochs (the order is the sampler's), augmented differently
    cfg = load_config(str(CONFIG))
    loader = build_dataloader(with_loader_args(cfg.train_dataloader, subset=48), seed=0)
    by_index = []
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)
        order = [key.index for key in loader.sampler]
        images = torch.cat(reference[epoch])
        by_index.append({i: images[p] for p, i in enumerate(order)})
    same = sum(torch.equal(by_index[0][i], by_index[1][i]) for i in by_index[0])
    assert same < 0.2 * len(by_index[0]), same  # crop offsets x flips: ~2% coincide


def test_seeded_transforms_leave_the_process_random_streams_alone():
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    expected = torch.rand(3), np.random.rand(), random.random()
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    with seeded_randomness(sample_seed(0, 1, 7)):
        inside = torch.rand(3)
    with seeded_randomness(sample_seed(0, 1, 7)):
        assert torch.equal(torch.rand(3), inside)  # a function of (seed, epoch, index)
    assert torch.equal(torch.rand(3), expected[0])
    assert np.random.rand() == expected[1] and random.random() == expected[2]
    seeds = {sample_seed(s, e, i) for s in range(2) for e in range(3) for i in range(50)}
    assert len(seeds) == 300 and all(0 <= s < 2**63 for s in seeds)


def test_seeded_sampler_refuses_a_dataset_that_cannot_read_its_keys():
    with pytest.raises(TypeError, match="SeededItems"):
        SeededSampler(list(range(10)), seed=0)
    assert isinstance(SeededIndex(3, 4), tuple)
