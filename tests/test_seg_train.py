"""DeepLabV3 (tiny) trained through ``tools/train.py`` on a tiny Cityscapes tree, iteration-based
as mmseg trains it (``IterBasedTrainLoop``, which the run config turns into
``ResumableIterBasedTrainLoop``).

* SIGKILLed in the 2nd pass over the data, resumed with ``--resume``, preempted (SIGUSR1:
  PreemptionHook checkpoints, exit 75) and resumed with ``--resume auto``, the run ends bitwise
  where the uninterrupted run ends (weights, BatchNorm buffers, optimizer state), loading no
  trained image again; mmengine's own loop, resumed at the same iteration, loads every trained
  batch again and ends elsewhere (its dropout draws after the resume are not the
  uninterrupted run's).
* e2e, InfoPro K=4 and InfoPro+HPFF K=4 train through the tool (finite losses, checkpoints
  holding what the method trains), and a 2-process torchrun run under DeepSpeed ZeRO-2 (gloo)
  keeps both ranks' weights identical, with SyncBN turned into BN on record.
* The loop itself, in process: resumed batches are the uninterrupted run's at every position
  of several passes, none loaded twice; other samplers replay.

The train set is the shared tree's 3 images plus 5 more (8: ASPP's image pooling needs 2 images
a batch, so every batch must be full): at batch 2, 4 iterations a pass. Subprocesses run with
one thread each (on 2 cores more only contend), independent ones side by side.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from checkpoint_compare import assert_checkpoints_bitwise_equal
from cityscapes_tree import H, W, write_tree
from conftest import REPO
from mmengine.config import Config
from mmengine.dataset import DefaultSampler
from PIL import Image
from seg_tiny import tiny_deeplab_cfg
from torch.utils.data import DataLoader, Dataset

from hpff_dist import compat
from hpff_dist.data.sample_seeds import SeededItems, SeededSampler, sample_seed
from hpff_dist.engine import resumable_loop
from hpff_dist.engine.checkpoint import MODEL_STATES_FILE
from hpff_dist.engine.resolve import RESUMABLE_ITER_LOOP
from hpff_dist.engine.resumable_loop import ResumableIterBasedTrainLoop, iteration_seed

BATCH = 2
TRAIN_IMAGES = 8  # the tree's 3 and 5 more
PER_PASS = TRAIN_IMAGES // BATCH  # 4 iterations a pass (epoch)
ITERS = 10  # passes 0 and 1, half of pass 2
CHECKPOINT_EVERY = 2
KILL_AT = 7  # pass 1 (epoch 1), its 3rd batch; the newest checkpoint is iter_6.pth
RESUMED_FROM = 6  # epoch 1, batch 2 of 4: in the middle of the 2nd pass
PREEMPTED_AT = 9  # SIGUSR1 in the resumed run: PreemptionHook writes iter_9.pth (epoch 2, batch 1)
EXIT_PREEMPTED = 75  # hpff_dist.engine.preemption.EXIT_PREEMPTED
TIMEOUT_S = 300


# ---------------------------------------------------------------------- data and configs
def _more_train_images(root: Path, n: int, seed: int = 7) -> None:
    """``n`` more train images (random pixels, random labelIds) in the official layout."""
    rng = np.random.default_rng(seed)
    images = root / "leftImg8bit" / "train" / "zurich"
    labels = root / "gtFine" / "train" / "zurich"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    for i in range(n):
        stem = f"zurich_{i:06d}_000019"
        pixels = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"{stem}_leftImg8bit.png")
        ids = rng.integers(0, 34, (H, W), dtype=np.uint8)
        Image.fromarray(ids).save(labels / f"{stem}_gtFine_labelIds.png")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """The tiny tree with 8 train images, converted to trainIds."""
    root = tmp_path_factory.mktemp("cityscapes")
    write_tree(root)
    _more_train_images(root, TRAIN_IMAGES - 3)
    proc = subprocess.run(
        [sys.executable, "tools/convert_cityscapes.py", str(root)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"converted {TRAIN_IMAGES + 1} " in proc.stdout, proc.stdout  # + 1 val image
    return root


def _config(
    folder: Path,
    root: Path,
    name: str,
    *,
    iters: int = ITERS,
    hooks: tuple[dict, ...] = (),
    loop: str | None = None,
    sync_bn: bool = False,
    strategy: dict | None = None,
) -> Path:
    """The shipped config ``deeplabv3_r101_d8_<name>.py`` at tiny size (``seg_tiny``), for
    ``iters`` iterations, checkpoints every 2, validation after the last, written as one file
    (``--cfg-options`` cannot give hooks). The shipped hooks but ``ThroughputHook``, which
    reads ``data_batch['images']`` (mmseg's batches hold ``inputs``)."""
    cfg = tiny_deeplab_cfg(name, root)
    cfg.custom_imports = dict(
        imports=["segmentation", "kill_at", "seg_hooks"], allow_failed_imports=False
    )
    cfg.custom_hooks = [
        dict(type="LocalLossCurvesHook", interval=25),
        dict(type="PreemptionHook"),
        *hooks,
    ]
    cfg.visualizer.vis_backends = [dict(type="LocalVisBackend")]  # scalars.json, no TensorBoard
    # mmseg's own metric for the validation after the last iteration: training is the subject
    cfg.val_evaluator = dict(type="mmseg.IoUMetric", iou_metrics=["mIoU"])
    cfg.train_dataloader.batch_size = BATCH
    cfg.train_cfg.max_iters = iters
    cfg.train_cfg.val_interval = iters
    cfg.param_scheduler[0].end = iters
    cfg.default_hooks.checkpoint.interval = CHECKPOINT_EVERY
    cfg.default_hooks.checkpoint.max_keep_ckpts = 10
    cfg.default_hooks.logger.interval = 1
    if loop is not None:
        cfg.train_cfg.type = loop
    if sync_bn:  # the shipped norm_cfg, which seg_tiny replaces by BN
        for part in ("backbone", "decode_head", "auxiliary_head"):
            cfg.model[part].norm_cfg = dict(type="SyncBN", requires_grad=True)
    if strategy is not None:
        cfg.strategy = strategy
    path = folder / f"{name}_{len(list(folder.glob('*.py')))}.py"
    cfg.dump(str(path))
    return path


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(REPO / "tests/dist_scripts"),
        "OMP_NUM_THREADS": "1",
    }


@dataclass
class Run:
    """A ``tools/train.py`` process writing its output to ``log``."""

    proc: subprocess.Popen
    log: Path

    def wait(self) -> subprocess.CompletedProcess:
        try:
            self.proc.wait(timeout=TIMEOUT_S)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        return subprocess.CompletedProcess(
            self.proc.args, self.proc.returncode, self.log.read_text()
        )


def _start(config: Path, work: Path, *extra: str, torchrun: bool = False) -> Run:
    """``tools/train.py CONFIG --work-dir WORK --no-test EXTRA`` in the background (output in a
    file: runs in parallel must not block on a full pipe); ``torchrun``: 2 processes."""
    work.parent.mkdir(parents=True, exist_ok=True)
    log = work.parent / f"{work.name}-{len(list(work.parent.glob('*.log')))}.log"
    launch = [sys.executable]
    if torchrun:
        launch += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command = [*launch, "tools/train.py", str(config), "--work-dir", str(work), "--no-test", *extra]
    with open(log, "w") as out:
        proc = subprocess.Popen(
            command, cwd=REPO, env=_env(), stdout=out, stderr=subprocess.STDOUT, text=True
        )
    return Run(proc, log)


def _train(config: Path, work: Path, *extra: str) -> subprocess.CompletedProcess:
    return _start(config, work, *extra).wait()


def _ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stdout[-4000:]
    return proc.stdout


# ---------------------------------------------------------------------- what a run left
def _load(path: Path) -> dict:
    compat.apply_all()
    return torch.load(path, map_location="cpu")


def _train_scalars(work: Path) -> list[dict]:
    """The logged training iterations (``scalars.json`` lines with a ``loss_*``/``*.loss_*``)."""
    (path,) = work.glob("*/vis_data/scalars.json")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return [line for line in lines if any("loss" in key for key in line)]


def _assert_finite_losses(work: Path, iters: int) -> dict[str, float]:
    logged = _train_scalars(work)
    assert [line["iter"] for line in logged] == list(range(1, iters + 1)), logged
    losses = {k: v for line in logged for k, v in line.items() if "loss" in k}
    assert losses and all(math.isfinite(v) for line in logged for v in line.values()), logged
    return losses


def _differing(a: dict, b: dict) -> list[str]:
    return [k for k in a if not torch.equal(a[k], b[k])]


# ---------------------------------------------------------------------- exact resume
@dataclass
class FirstRuns:
    """InfoPro+HPFF K=4 for ``ITERS`` iterations, counting the images it loads: uninterrupted
    (``straight``), SIGKILLed after ``KILL_AT`` (``cut``), and under mmengine's own loop
    (``plain``), started together; ``signalled``: the config whose run gets SIGUSR1 during
    iteration ``PREEMPTED_AT``."""

    config: Path
    signalled: Path
    straight: Path
    cut: Path
    cut_run: subprocess.CompletedProcess
    plain_config: Path
    plain: Path
    plain_run: subprocess.CompletedProcess


@pytest.fixture(scope="module")
def first_runs(root, tmp_path_factory) -> FirstRuns:
    folder = tmp_path_factory.mktemp("first_runs")
    count = dict(type="CountLoads")
    config = _config(folder, root, "k4_infopro_hpff", hooks=(count,))
    killed = _config(
        folder, root, "k4_infopro_hpff", hooks=(count, dict(type="KillAt", iteration=KILL_AT))
    )
    signalled = _config(
        folder,
        root,
        "k4_infopro_hpff",
        hooks=(count, dict(type="SignalAt", iteration=PREEMPTED_AT)),
    )
    plain = _config(
        folder, root, "k4_infopro_hpff", hooks=(count,), loop="MMEngineIterBasedTrainLoop"
    )
    runs = [
        _start(config, folder / "straight"),
        _start(killed, folder / "cut"),
        _start(plain, folder / "plain"),
    ]
    straight, cut, plain_run = (run.wait() for run in runs)
    _ok(straight)
    return FirstRuns(
        config, signalled, folder / "straight", folder / "cut", cut, plain, folder / "plain",
        plain_run,
    )  # fmt: skip


@pytest.fixture(scope="module")
def straight(first_runs) -> Path:
    """The uninterrupted InfoPro+HPFF run's work dir."""
    return first_runs.straight


def test_sigkilled_then_preempted_and_resumed_equals_uninterrupted(first_runs):
    """SIGKILL after iteration 7 (pass 2); ``--resume`` from iter_6.pth, where SIGUSR1 during
    iteration 9 makes PreemptionHook write iter_9.pth and exit 75; ``--resume auto`` from there
    to the end: bitwise the uninterrupted run, and the last run loads only its own batch."""
    cut, first = first_runs.cut, first_runs.cut_run
    assert first.returncode == -9, first.stdout[-3000:]
    assert (cut / f"iter_{RESUMED_FROM}.pth").is_file()
    assert not (cut / f"iter_{RESUMED_FROM + CHECKPOINT_EVERY}.pth").exists()

    second = _train(first_runs.signalled, cut, "--resume")
    assert second.returncode == EXIT_PREEMPTED, second.stdout[-3000:]
    epoch, batch = divmod(RESUMED_FROM, PER_PASS)
    assert (
        f"resuming iteration {RESUMED_FROM} at epoch {epoch}, batch {batch} of {PER_PASS} "
        "(the sampler starts there)"
    ) in second.stdout, second.stdout[-3000:]
    assert f"SIGUSR1: stopped after iteration {PREEMPTED_AT} " in second.stdout
    assert (cut / "last_checkpoint").read_text().strip() == str(cut / f"iter_{PREEMPTED_AT}.pth")

    log = _ok(_train(first_runs.config, cut, "--resume", "auto"))
    epoch, batch = divmod(PREEMPTED_AT, PER_PASS)
    assert (
        f"resuming iteration {PREEMPTED_AT} at epoch {epoch}, batch {batch} of {PER_PASS} "
        "(the sampler starts there)"
    ) in log, log[-3000:]
    # only the untrained batch was loaded: 1 iteration x 2 images, not 10 x 2
    loads = json.loads((cut / "loads.json").read_text())
    assert loads == {"loads": (ITERS - PREEMPTED_AT) * BATCH, "first_iter": PREEMPTED_AT}
    a, b = _load(first_runs.straight / f"iter_{ITERS}.pth"), _load(cut / f"iter_{ITERS}.pth")
    assert_checkpoints_bitwise_equal(a, b)
    # the checkpoint records the pass: 10 iterations of 4 a pass end in epoch 2
    assert (b["meta"]["epoch"], b["meta"]["iter"]) == (ITERS // PER_PASS, ITERS)


def test_mmengine_iteration_loop_replays_every_batch_and_ends_elsewhere(first_runs, tmp_path):
    """mmengine's loop resumed at iteration 6 loads the 6 trained batches again before its
    first step, and the run does not end where the uninterrupted one does: a checkpoint does
    not hold the random generators, so its dropout draws after the resume differ."""
    _ok(first_runs.plain_run)
    resumed = tmp_path / "resumed"
    checkpoint = first_runs.plain / f"iter_{RESUMED_FROM}.pth"
    log = _ok(_train(first_runs.plain_config, resumed, "--resume", str(checkpoint)))
    assert f"Advance dataloader {RESUMED_FROM} steps" in log, log[-3000:]
    loads = json.loads((resumed / "loads.json").read_text())
    assert loads == {"loads": ITERS * BATCH, "first_iter": RESUMED_FROM}
    a = _load(first_runs.plain / f"iter_{ITERS}.pth")["state_dict"]
    b = _load(resumed / f"iter_{ITERS}.pth")["state_dict"]
    assert len(_differing(a, b)) > len(a) // 2


# ---------------------------------------------------------------------- through the tools
def _assert_checkpoint(work: Path, iters: int, local_heads: bool) -> dict:
    """``iter_<iters>.pth``: the iteration, finite weights, momentum for every parameter, and
    local heads exactly when the method trains some."""
    ckpt = _load(work / f"iter_{iters}.pth")
    assert ckpt["meta"]["iter"] == iters
    state = ckpt["state_dict"]
    assert all(torch.isfinite(v.float()).all() for v in state.values())
    assert any(k.startswith("local_heads.") for k in state) == local_heads
    assert {"backbone.stem.0.weight", "decode_head.conv_seg.weight"} <= state.keys()
    momenta = ckpt["optimizer"]["state"]
    assert momenta and all("momentum_buffer" in v for v in momenta.values())
    return ckpt


def test_infopro_hpff_trains_through_the_tool(straight):
    losses = _assert_finite_losses(straight, ITERS)
    assert {"loss_ind", "loss_cas", "loss_aux"} <= losses.keys()  # InfoPro: both head kinds
    _assert_checkpoint(straight, ITERS, local_heads=True)
    changes = {r["key"]: r for r in json.loads((straight / "config_changes.json").read_text())}
    loop = changes["train_cfg.type"]
    assert (loop["old"], loop["new"]) == ("IterBasedTrainLoop", RESUMABLE_ITER_LOOP)
    assert sorted(p.name for p in straight.glob("iter_*.pth")) == sorted(
        f"iter_{i}.pth" for i in range(CHECKPOINT_EVERY, ITERS + 1, CHECKPOINT_EVERY)
    )
    (path,) = straight.glob("*/vis_data/scalars.json")
    validated = [json.loads(line) for line in path.read_text().splitlines() if "mIoU" in line]
    assert [line["step"] for line in validated] == [ITERS]  # once, after the last iteration


def test_e2e_and_infopro_train_two_iterations_through_the_tool(root, tmp_path):
    """mmseg's training (e2e: no local heads) and InfoPro K=4 (local heads), 2 iterations each,
    run side by side."""
    methods = {"e2e": False, "k4_infopro": True}
    runs = {
        name: _start(
            _config(tmp_path, root, name, iters=2, hooks=(dict(type="RankStates"),)),
            tmp_path / name,
        )
        for name in methods
    }
    for run in runs.values():
        _ok(run.wait())
    for name, local_heads in methods.items():
        work = tmp_path / name
        _assert_finite_losses(work, 2)
        _assert_checkpoint(work, 2, local_heads)
        before, after = (_load(work / f"rank0_{when}.pt") for when in ("before", "after"))
        trained = _differing(before, after)
        assert len(trained) > len(before) // 2, (name, trained)  # the steps changed most


def test_two_processes_deepspeed_zero2_keep_the_ranks_identical(root, tmp_path):
    """torchrun, 2 CPU processes (gloo), ZeRO-2, the shipped SyncBN: both ranks hold the same
    weights and buffers after two steps on different images, the steps changed them, SyncBN
    became BN on record, and the checkpoint is DeepSpeed's directory with both partitions."""
    config = _config(
        tmp_path, root, "k4_infopro_hpff", iters=2, hooks=(dict(type="RankStates"),),
        sync_bn=True,
        strategy=dict(type="LocalDeepSpeedStrategy", zero_optimization=dict(stage=2)),
    )  # fmt: skip
    work = tmp_path / "work"
    _ok(_start(config, work, "--launcher", "pytorch", torchrun=True).wait())
    _assert_finite_losses(work, 2)
    ranks = [
        {when: _load(work / f"rank{r}_{when}.pt") for when in ("before", "after")} for r in (0, 1)
    ]
    assert ranks[0]["before"].keys() == ranks[1]["after"].keys()
    assert not _differing(ranks[0]["before"], ranks[1]["before"])  # the same initialisation
    assert not _differing(ranks[0]["after"], ranks[1]["after"])  # the same steps
    assert len(_differing(ranks[0]["before"], ranks[0]["after"])) > len(ranks[0]["after"]) // 2
    checkpoint = work / "iter_2.pth"
    assert (checkpoint / MODEL_STATES_FILE).is_file()
    partitions = sorted(p.name for p in checkpoint.glob("*optim_states.pt"))
    assert len(partitions) == 2, partitions
    changes = {
        (r["by"], r["key"]): (r["old"], r["new"])
        for r in json.loads((work / "config_changes.json").read_text())
    }
    for part in ("backbone", "decode_head", "auxiliary_head"):
        assert changes[("resolve_config", f"model.{part}.norm_cfg.type")] == ("SyncBN", "BN")
    assert changes[("resolve_config", "train_cfg.type")] == (
        "IterBasedTrainLoop",
        RESUMABLE_ITER_LOOP,
    )
    resolved = Config.fromfile(str(work / "resolved_config.py"), import_custom_modules=False)
    assert "SyncBN" not in str(resolved.model.to_dict())


# ---------------------------------------------------------------------- the loop itself
class _Items(SeededItems, Dataset):
    """``[index, a random draw]``: the draw is a function of (seed, epoch, index) under
    ``SeededSampler``; counts its loads."""

    def __init__(self, n: int) -> None:
        self.n, self.loaded = n, 0

    def __len__(self) -> int:
        return self.n

    def load_item(self, index: int) -> torch.Tensor:
        self.loaded += 1
        return torch.tensor([index, int(torch.randint(0, 2**30, ()))])


def _loop(sampler: str, start: int) -> tuple[ResumableIterBasedTrainLoop, _Items]:
    """The loop over 7 items at batch 2 (4 batches a pass, the last of 1), at iteration
    ``start`` as ``Runner.resume`` leaves it; a stand-in runner (what the batches need)."""
    items = _Items(7)
    kind = SeededSampler if sampler == "seeded" else DefaultSampler
    loader = DataLoader(items, batch_size=2, sampler=kind(items, seed=3), num_workers=0)
    runner = SimpleNamespace(visualizer=SimpleNamespace(), seed=3, rank=0)
    loop = ResumableIterBasedTrainLoop(runner, loader, max_iters=100)
    loop._iter = start
    return loop, items


def _batches(loop: ResumableIterBasedTrainLoop, n: int) -> list[torch.Tensor]:
    batches = loop._resumed_batches()
    return [next(batches) for _ in range(n)]


def test_resumed_batches_are_the_uninterrupted_runs_and_none_is_loaded_twice(monkeypatch):
    logged: list[str] = []
    monkeypatch.setattr(resumable_loop, "print_log", lambda msg, **kw: logged.append(msg))
    total = 14  # 3.5 passes
    reference = _batches(_loop("seeded", 0)[0], total)
    assert not torch.equal(reference[0], reference[4])  # pass 1 is another order or draw
    for start in (1, 4, 6, 9, 13):
        loop, items = _loop("seeded", start)
        got = _batches(loop, total - start)
        assert all(torch.equal(a, b) for a, b in zip(got, reference[start:])), start
        assert items.loaded == sum(len(b) for b in got), start  # no trained batch loaded
        assert loop.epoch == (total - 1) // 4  # the pass of the last batch
    assert logged[-1] == "resuming iteration 13 at epoch 3, batch 1 of 4 (the sampler starts there)"


def test_a_sampler_without_start_at_replays_the_trained_batches(monkeypatch):
    logged: list[str] = []
    monkeypatch.setattr(resumable_loop, "print_log", lambda msg, **kw: logged.append(msg))
    reference = _batches(_loop("default", 0)[0], 9)
    loop, items = _loop("default", 6)
    got = _batches(loop, 3)
    assert all(torch.equal(a[:, 0], b[:, 0]) for a, b in zip(got, reference[6:]))  # indices
    assert items.loaded == sum(len(b) for b in reference)  # 6 trained batches loaded again
    assert logged == [
        "resuming iteration 6 by loading and dropping the 6 trained batches (DefaultSampler "
        "cannot start mid-pass: no start_at)"
    ]


def test_an_empty_loader_is_refused():
    items = _Items(0)
    loader = DataLoader(items, batch_size=2, sampler=SeededSampler(items, seed=0))
    runner = SimpleNamespace(visualizer=SimpleNamespace(), seed=0, rank=0)
    loop = ResumableIterBasedTrainLoop(runner, loader, max_iters=4)
    with pytest.raises(ValueError, match="train_dataloader has no batch"):
        loop._resumed_batches()


def test_iteration_seeds_differ_by_iteration_and_rank_and_not_from_sample_seeds():
    seeds = {iteration_seed(0, i, r) for i in range(100) for r in range(4)}
    assert len(seeds) == 400 and all(0 <= s < 2**63 for s in seeds)
    assert iteration_seed(5, 3, 1) == iteration_seed(5, 3, 1)
    assert not seeds & {sample_seed(0, e, i) for e in range(100) for i in range(4)}
