"""Peak saved-activation memory of one ImageNet training step, per experiment config, as JSON.

``python tools/benchmark_imagenet_memory.py [--batch 32] [--image-size 224] [CONFIG ...]``

For each config (default: ResNet-101 e2e, infopro_hpff K=4 and K=8) a fresh process builds the
model from the real experiment config and runs one training step (the learner's schedule with a
plain backward, no optimizer) on random images under ``SavedTensorMeter``: the peak bytes of
tensors saved for backward (parameters excluded), the peaks of the parts first saved inside the
aux heads and outside them (backbone: stem, blocks, the net's own head),
the step's wall time and the process's peak RSS. One process per config so that RSS is
per-config and one run's allocator state cannot inflate the next (see METHOD.md, "Measuring
memory without a GPU").
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIGS = (
    "configs/imagenet/resnet101_e2e.py",
    "configs/imagenet/resnet101_k4_infopro_hpff.py",
    "configs/imagenet/resnet101_k8_infopro_hpff.py",
)


def measure(config: str, batch: int, image_size: int, num_classes: int, seed: int) -> dict:
    """One training step of ``config``'s model under the saved-tensor meter."""
    import torch
    from mmengine.registry import init_default_scope

    import hpff_dist.models  # noqa: F401  (registers the models)
    from hpff_dist.engine.config import load_config
    from hpff_dist.local.memory import SavedTensorMeter
    from hpff_dist.registry import MODELS

    init_default_scope("hpff_dist")
    cfg = load_config(
        str(REPO / config),
        {"model.image_size": image_size, "model.num_classes": num_classes},
    )
    torch.manual_seed(seed)
    model = MODELS.build(cfg.model).train()
    learner = model.learner
    images = torch.rand(batch, 3, image_size, image_size)
    targets = torch.randint(0, num_classes, (batch,))
    batch_in = model.data_preprocessor([images, targets], True)
    start = time.perf_counter()
    with SavedTensorMeter(ignore=learner) as meter:
        out = learner.train_step_losses(batch_in["inputs"], batch_in["targets"], batch_in["images"])
    seconds = time.perf_counter() - start
    return {
        "config": config,
        "method": learner.spec.method,
        "k": learner.plan.k,
        "modules": learner.plan.num_modules,
        "batch": batch,
        "image_size": image_size,
        "peak_saved_bytes": meter.peak_bytes,
        "peak_saved_gib": round(meter.peak_bytes / 2**30, 3),
        "aux_peak_saved_gib": round(meter.region_peak_bytes.get("aux", 0) / 2**30, 3),
        "backbone_peak_saved_gib": round(meter.region_peak_bytes.get("other", 0) / 2**30, 3),
        "step_seconds": round(seconds, 1),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "losses": {k: round(float(v), 4) for k, v in out.losses.items()},
        "params_m": round(sum(p.numel() for p in learner.parameters()) / 1e6, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("configs", nargs="*", default=list(DEFAULT_CONFIGS))
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.inner:
        (config,) = args.configs
        print(json.dumps(measure(config, args.batch, args.image_size, args.num_classes, args.seed)))
        return
    results = []
    for config in args.configs:
        cmd = [sys.executable, __file__, config, "--inner", "--batch", str(args.batch),
               "--image-size", str(args.image_size), "--num-classes", str(args.num_classes),
               "--seed", str(args.seed)]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr)
            raise SystemExit(f"{config}: measurement failed (exit {proc.returncode})")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
