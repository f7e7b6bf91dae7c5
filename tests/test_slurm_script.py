"""The sbatch script's command line resolves to a valid DeepSpeed run config under SLURM."""

import re
import shlex
from pathlib import Path

import pytest

from hpff_dist.engine.config import load_config
from hpff_dist.engine.resolve import DEEPSPEED_STRATEGY, resolve_config

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "slurm/imagenet_r101.sh"


def test_sbatch_script_config_and_overrides(monkeypatch):
    text = SCRIPT.read_text()
    config = re.search(r"CONFIG=\$\{CONFIG:-(\S+)\}", text).group(1)
    assert (REPO / config).is_file()
    overrides = re.search(r"--cfg-options (.+?) \"\$@\"", text).group(1)
    options = {}
    for item in shlex.split(overrides.replace('"$ZERO"', "1")):
        key, value = item.split("=", 1)
        options[key] = {"True": True}.get(value, int(value) if value.isdigit() else value)
    for key, value in {
        "SLURM_PROCID": "3",
        "SLURM_NTASKS": "16",
        "SLURM_LOCALID": "3",
        "SLURM_JOB_NODELIST": "gpu[07-08]",
        "SLURM_JOB_ID": "4242",
    }.items():
        monkeypatch.setenv(key, value)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("IMAGENET_SHARDS", "/data/wds")
    cfg = load_config(str(REPO / config), options)
    cfg.launcher = "slurm"
    prepared, _ = resolve_config(cfg)
    assert prepared.strategy["type"] == DEEPSPEED_STRATEGY  # filled in: overrides gave no type
    assert prepared.strategy["zero_optimization"]["stage"] == 1
    assert prepared.strategy["bf16"]["enabled"] is True
    assert prepared.train_dataloader.root == "/data/wds"  # DALI loader dict


@pytest.mark.parametrize("needle", ["--launcher slurm", "--resume", "#SBATCH --requeue"])
def test_sbatch_script_resumes_after_preemption(needle):
    assert needle in SCRIPT.read_text()
