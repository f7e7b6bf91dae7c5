"""What a config builds, as plain data: parameter/buffer names and shapes, the method spec and
the split plan. Built on the meta device (no memory, no init cost), so every config in
``configs/`` can be checked in seconds. ``python tests/config_signature.py OUT.json`` writes
the signatures of all configs; ``--digests`` writes one sha256 per config instead, the form
``tests/data/config_digests.json`` keeps (test_configs.py holds every config to it)."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def config_files() -> list[Path]:
    return sorted(p for p in (REPO / "configs").rglob("*.py") if "_base_" not in p.parts)


def resolve_as_launched(path: Path):
    """The config at ``path`` resolved as its run would be: one process, or, for a pipeline of
    P stages, rank 0 of P processes under torchrun (a pipeline cannot run in one process)."""
    from hpff_dist.engine.config import load_config
    from hpff_dist.engine.launchers import DistEnv
    from hpff_dist.engine.resolve import resolve_config

    cfg = load_config(str(path))
    env = None
    stages = ((cfg.get("strategy") or {}).get("pipeline") or {}).get("stages", 1)
    if stages > 1:
        cfg.launcher = "pytorch"
        env = DistEnv("pytorch", 0, stages, 0, "gloo")
    return resolve_config(cfg, env)


def signature(path: Path) -> dict:
    from hpff_dist.registry import MODELS

    cfg, _ = resolve_as_launched(path)
    with torch.device("meta"):
        model = MODELS.build(cfg.model)
    learner = model.learner
    spec = learner.spec.to_dict()
    spec.pop("levels", None)
    if spec.get("pff"):
        spec["pff"]["levels"] = list(spec["pff"]["levels"])
    return {
        "params": {k: list(v.shape) for k, v in model.named_parameters()},
        "buffers": {k: list(v.shape) for k, v in model.named_buffers()},
        "spec": spec,
        "plan": [list(m) for m in learner.plan.modules],
        "levels": [lv.to_dict() for lv in learner.spec.resolved_levels()],
    }


def digest(sig: dict) -> str:
    return hashlib.sha256(json.dumps(sig, sort_keys=True).encode()).hexdigest()


def main(out: str, digests: bool = False) -> None:
    sigs = {str(p.relative_to(REPO)): signature(p) for p in config_files()}
    data = {k: digest(v) for k, v in sigs.items()} if digests else sigs
    Path(out).write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"{len(sigs)} configs -> {out}")


if __name__ == "__main__":
    main(sys.argv[1], "--digests" in sys.argv[2:])
