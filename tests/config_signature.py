"""What a config builds, as plain data: parameter/buffer names and shapes, the method spec and
the split plan. Built on the meta device (no memory, no init cost), so every config in
``configs/`` can be checked in seconds. ``python tests/config_signature.py OUT.json`` writes
the signatures of all configs (used to show a refactor keeps every config's meaning)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def config_files() -> list[Path]:
    return sorted(p for p in (REPO / "configs").rglob("*.py") if "_base_" not in p.parts)


def signature(path: Path) -> dict:
    import hpff_dist  # noqa: F401
    from hpff_dist.engine.config import load_config
    from hpff_dist.registry import MODELS

    cfg = load_config(str(path))
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
    }


def main(out: str) -> None:
    sigs = {str(p.relative_to(REPO)): signature(p) for p in config_files()}
    Path(out).write_text(json.dumps(sigs, indent=1, sort_keys=True))
    print(f"{len(sigs)} configs -> {out}")


if __name__ == "__main__":
    main(sys.argv[1])
