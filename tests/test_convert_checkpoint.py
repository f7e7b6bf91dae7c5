"""tools/convert_checkpoint.py: a ZeRO-2 checkpoint of 2 ranks -> one .pth whose weights give the
distributed model's logits in a single process, and that tools/test.py-style strict loads take."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hpff_dist import compat
from hpff_dist.engine.checkpoint import MODEL_STATES_FILE, check_same_model
from hpff_dist.engine.checkpoint_convert import consolidate
from hpff_dist.engine.checkpoint_files import CheckpointError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def zero2_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("zero2")
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(REPO / "tests/dist_scripts/convert.py"), str(root / "work"), str(root / "logits.pt")],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return root


def test_converted_weights_give_the_distributed_logits(zero2_run, tmp_path):
    checkpoint = zero2_run / "work" / "iter_2.pth"
    assert len(list(checkpoint.glob("*_optim_states.pt"))) == 2  # ZeRO-2: two partitions
    out = tmp_path / "plain.pth"
    run = subprocess.run(
        [sys.executable, "tools/convert_checkpoint.py", str(checkpoint), str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["zero_stage"] == 2 and summary["iter"] == 2

    compat.apply_all()
    from hpff_dist.models.classifier import LocalClassifier

    reference = torch.load(zero2_run / "logits.pt")
    converted = torch.load(out, map_location="cpu")  # plain torch, safe loader
    model = LocalClassifier(**reference["model"])
    check_same_model(converted["state_dict"], model, str(out))  # every key, every shape
    model.load_state_dict(converted["state_dict"], strict=True)
    assert all(v.dtype != torch.bfloat16 for v in converted["state_dict"].values())
    assert converted["meta"]["epoch"] == 0 and "cfg" in converted["meta"]
    model.eval()
    with torch.no_grad():
        logits = model(reference["images"])
    torch.testing.assert_close(logits, reference["logits"], rtol=0, atol=1e-6)
    # the weights came from the ZeRO partitions (fp32 masters), the buffers from the module
    module = torch.load(checkpoint / MODEL_STATES_FILE, map_location="cpu", weights_only=False)
    assert set(module["module"]) == set(converted["state_dict"])


def test_an_incomplete_directory_is_refused(zero2_run, tmp_path):
    import shutil

    broken = tmp_path / "iter_2.pth"
    shutil.copytree(zero2_run / "work" / "iter_2.pth", broken)
    next(broken.glob("zero_pp_rank_1_*")).unlink()  # a rank's save did not finish
    with pytest.raises(CheckpointError, match="1 optimizer partitions but was written by 2"):
        consolidate(str(broken))
    with pytest.raises(CheckpointError, match="not a DeepSpeed checkpoint directory"):
        consolidate(str(tmp_path))
