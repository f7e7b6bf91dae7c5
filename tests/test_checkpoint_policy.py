"""Strict checkpoints and a resume that says what it does, through the real tools.

Each case runs ``tools/train.py`` or ``tools/test.py`` in a subprocess on a Fashion-MNIST
subset and asserts the exit code and that the message names the file or work dir and the fix.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hpff_dist import compat
from hpff_dist.engine.checkpoint import MODEL_STATES_FILE
from hpff_dist.engine.checkpoint_files import (
    CheckpointError,
    atomic_write,
    checkpoint_problem,
    find_resume_checkpoint,
    list_checkpoints,
)

REPO = Path(__file__).resolve().parents[1]
E2E = REPO / "configs/fashion_mnist/resnet32_e2e.py"
DGL_HPFF = REPO / "configs/fashion_mnist/resnet32_k16_dgl_hpff.py"
#: small and quick: ResNet-8, 256 training images (4 steps an epoch), 100 test images
SMALL = [
    "model.backbone.depth=8",
    "train_dataloader.dataset.subset=256",
    "train_dataloader.batch_size=64",
    "val_dataloader.dataset.subset=100",
    "test_dataloader.dataset.subset=100",
    "train_dataloader.num_workers=0",
    "train_dataloader.persistent_workers=False",
    "val_dataloader.num_workers=0",
    "val_dataloader.persistent_workers=False",
]


def _tool(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    if ok:
        assert out.returncode == 0, (out.stdout[-3000:], out.stderr[-3000:])
    else:
        assert out.returncode != 0, out.stdout[-3000:]
    return out


def _test(config: Path, checkpoint: Path | str, tmp: Path, *extra: str, ok: bool = True):
    """tools/test.py on the small model (K=3 for the local configs: ResNet-8 has 3 blocks)."""
    local = ["model.arch=None", "model.method.k=3"] if config == DGL_HPFF else []
    return _tool(
        "tools/test.py",
        str(config),
        str(checkpoint),
        "--work-dir",
        str(tmp / "test"),
        "--out",
        str(tmp / "metrics.json"),
        *extra,
        "--cfg-options",
        *SMALL,
        *local,
        ok=ok,
    )


def _trained(out: subprocess.CompletedProcess) -> bool:
    return "Epoch(train)" in out.stdout + out.stderr


@pytest.fixture(scope="module")
def e2e_run(tmp_path_factory) -> Path:
    """An e2e run of 2 epochs: epoch_1.pth, epoch_2.pth, last_checkpoint."""
    work = tmp_path_factory.mktemp("e2e")
    _tool("tools/train.py", str(E2E), "--work-dir", str(work), "--no-test", "--cfg-options", *SMALL)
    assert (work / "epoch_2.pth").is_file()
    return work


def test_a_checkpoint_of_another_model_is_refused_with_its_keys(e2e_run, tmp_path):
    out = _test(DGL_HPFF, e2e_run / "epoch_2.pth", tmp_path, ok=False)
    message = out.stderr
    assert "missing keys: learner.heads." in message  # the dgl_hpff heads the e2e run lacks
    assert str(e2e_run / "epoch_2.pth") in message
    assert "--partial-load" in message
    assert not (tmp_path / "metrics.json").exists()  # no metrics of a half-loaded model
    # on purpose: the matching keys load, the metrics are written
    _test(DGL_HPFF, e2e_run / "epoch_2.pth", tmp_path, "--partial-load")
    assert (tmp_path / "metrics.json").exists()


def test_a_mis_shaped_checkpoint_is_refused_with_the_shapes(e2e_run, tmp_path):
    # the same run's checkpoint under a 3-channel stem: the stem's shape differs
    out = _tool(
        "tools/test.py",
        str(E2E),
        str(e2e_run / "epoch_2.pth"),
        "--work-dir",
        str(tmp_path / "t"),
        "--cfg-options",
        *SMALL,
        "model.backbone.in_channels=3",
        ok=False,
    )
    assert "learner.net.stem.0.weight (16, 1, 3, 3) vs (16, 3, 3, 3)" in out.stderr


@pytest.mark.parametrize(
    "content, says",
    [
        (b"", "is empty (0 bytes)"),
        (b"not a checkpoint\n", "is a text file"),
        (b"\x80\x04garbage", "is not a readable torch checkpoint"),  # a legacy pickle's start
    ],
    ids=["empty", "text", "garbage-pickle"],
)
def test_a_file_that_is_not_a_checkpoint_is_named_so(e2e_run, tmp_path, content, says):
    bad = tmp_path / "model.pth"
    bad.write_bytes(content)
    out = _test(E2E, bad, tmp_path, ok=False)
    assert f"{bad} {says}" in out.stderr
    assert "weights_only=False" not in out.stderr  # never the unsafe advice
    assert "Epoch(test)" not in out.stdout + out.stderr


def test_a_foreign_pickle_is_refused_without_unsafe_advice(tmp_path):
    import argparse  # a type torch's safe unpickler does not allow

    torch.save({"state_dict": {}, "args": argparse.Namespace(lr=0.1)}, tmp_path / "foreign.pth")
    out = _test(E2E, tmp_path / "foreign.pth", tmp_path, ok=False)
    assert "safe loader refuses" in out.stderr and "foreign.pth" in out.stderr
    assert "weights_only=False" not in out.stderr


def test_deepspeed_module_states_evaluate_like_the_pth_they_hold(e2e_run, tmp_path):
    compat.apply_all()
    state = torch.load(e2e_run / "epoch_2.pth", map_location="cpu")["state_dict"]
    directory = tmp_path / "iter_8.pth"  # DeepSpeed's layout: a directory named like the file
    directory.mkdir()
    torch.save({"module": state, "global_steps": 8}, directory / MODEL_STATES_FILE)
    _test(E2E, e2e_run / "epoch_2.pth", tmp_path)
    expected = json.loads((tmp_path / "metrics.json").read_text())
    for checkpoint in (directory, directory / MODEL_STATES_FILE):
        (tmp_path / "metrics.json").unlink()
        _test(E2E, checkpoint, tmp_path)
        assert json.loads((tmp_path / "metrics.json").read_text()) == expected


def test_resume_with_nothing_to_resume_is_an_error_naming_the_work_dir(tmp_path):
    work = tmp_path / "typo_in_work_dir"
    out = _tool("tools/train.py", str(E2E), "--work-dir", str(work), "--resume", "--cfg-options",
                *SMALL, ok=False)  # fmt: skip
    assert f"no checkpoint to resume in work dir {work}" in out.stderr
    assert "--resume auto" in out.stderr
    assert not _trained(out) and not list(work.glob("*.pth"))
    # --resume auto: nothing there yet means start fresh, on record
    _tool("tools/train.py", str(E2E), "--work-dir", str(work), "--resume", "auto", "--no-test",
          "--cfg-options", *SMALL, "train_cfg.max_epochs=1")  # fmt: skip
    assert (work / "epoch_1.pth").is_file()
    changes = json.loads((work / "config_changes.json").read_text())
    assert any(c["key"] == "resume" and c["new"] is False for c in changes), changes


def test_a_truncated_latest_checkpoint_falls_back_to_the_intact_one(e2e_run, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(e2e_run, work)  # last_checkpoint names the original: the copy's is used
    latest = work / "epoch_2.pth"
    latest.write_bytes(latest.read_bytes()[:100_000])  # killed while writing
    out = _tool("tools/train.py", str(E2E), "--work-dir", str(work), "--resume", "--no-test",
                "--cfg-options", *SMALL, "train_cfg.max_epochs=2")  # fmt: skip
    log = out.stdout + out.stderr
    assert f"not resuming from {latest}: it is truncated or corrupt" in log
    assert f"Resuming from {work / 'epoch_1.pth'}, the newest intact checkpoint" in log
    assert "resumed epoch: 1" in log
    assert checkpoint_problem(str(latest)) is None  # epoch 2 was trained and written again


def test_resume_stops_naming_every_broken_checkpoint(tmp_path):
    (tmp_path / "epoch_1.pth").write_bytes(b"PK\x03\x04garbage")
    (tmp_path / "last_checkpoint").write_text(str(tmp_path / "epoch_1.pth"))
    with pytest.raises(CheckpointError, match="no intact checkpoint.*epoch_1.pth is truncated"):
        find_resume_checkpoint(str(tmp_path))


def test_atomic_write_leaves_no_half_file_under_the_name(tmp_path):
    target = tmp_path / "epoch_3.pth"

    def killed(partial: str) -> None:
        Path(partial).write_bytes(b"PK\x03\x04half")
        raise KeyboardInterrupt("killed mid-write")

    with pytest.raises(KeyboardInterrupt):
        atomic_write(str(target), killed)
    assert not target.exists()
    assert list_checkpoints(str(tmp_path)) == []  # the partial file is not a candidate
    atomic_write(str(target), lambda partial: torch.save({"a": torch.ones(2)}, partial))
    assert checkpoint_problem(str(target)) is None
    assert sorted(os.listdir(tmp_path)) == ["epoch_3.pth"]


def test_resume_never_picks_a_best_checkpoint_and_refuses_one_given(e2e_run, tmp_path):
    """``best_*.pth`` holds weights and meta but no optimizer: resuming it would silently reset
    momentum and the schedule."""
    work = tmp_path / "work"
    shutil.copytree(e2e_run, work)
    compat.apply_all()
    full = torch.load(work / "epoch_2.pth", map_location="cpu")
    best = work / "best_top1_epoch_2.pth"
    torch.save({"meta": full["meta"], "state_dict": full["state_dict"]}, best)  # as mmengine
    (work / "epoch_2.pth").write_bytes(b"PK\x03\x04cut")
    assert find_resume_checkpoint(str(work)) == str(work / "epoch_1.pth")
    out = _tool("tools/train.py", str(E2E), "--work-dir", str(work), "--resume", str(best),
                "--no-test", "--cfg-options", *SMALL, ok=False)  # fmt: skip
    assert f"{best} holds no training state to resume (no optimizer" in out.stderr
    assert not _trained(out)


def test_resume_without_a_fixed_seed_takes_the_checkpoint_seed(tmp_path):
    """``randomness.seed=None`` draws a seed at each start; the resumed run must use the
    first run's, or its data order and augmentations differ."""
    work = tmp_path / "work"
    unseeded = (*SMALL, "randomness.seed=None")
    _tool("tools/train.py", str(E2E), "--work-dir", str(work), "--no-test", "--cfg-options",
          *unseeded, "train_cfg.max_epochs=1")  # fmt: skip
    compat.apply_all()
    seed = torch.load(work / "epoch_1.pth", map_location="cpu")["meta"]["seed"]
    _tool("tools/train.py", str(E2E), "--work-dir", str(work), "--resume", "--no-test",
          "--cfg-options", *unseeded)  # fmt: skip
    changes = json.loads((work / "config_changes.json").read_text())
    recorded = [c for c in changes if c["key"] == "randomness.seed"]
    assert recorded and recorded[0]["new"] == seed, changes
