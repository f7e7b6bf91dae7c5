"""Evaluate a checkpoint: ``python tools/test.py CONFIG CHECKPOINT [--out results.json]``.

The checkpoint must fit the model the config builds (every key, every shape); a mismatch is an
error naming the keys, not metrics of a half-loaded model (``--partial-load`` on purpose).
CHECKPOINT is a ``.pth`` file of tools/train.py, or a DeepSpeed checkpoint directory (its
module weights)."""

from __future__ import annotations

import argparse
import json
import os

from hpff_dist.engine.config import DictAction, load_config


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("config")
    p.add_argument("checkpoint")
    p.add_argument("--out", help="write the metrics as JSON here")
    p.add_argument("--work-dir")
    p.add_argument("--data-root", help="dataset folder for the train, val and test loaders")
    p.add_argument("--launcher", choices=["none", "pytorch", "slurm"], default="none")
    p.add_argument("--cfg-options", nargs="+", action=DictAction)
    p.add_argument(
        "--partial-load",
        action="store_true",
        help="evaluate even when the checkpoint does not fit the model (missing/unexpected "
        "keys are logged, not refused): config key load_strict=False",
    )
    return p.parse_args()


def main() -> None:
    args = parse_args()
    from hpff_dist.engine.checkpoint_files import require_checkpoint
    from hpff_dist.engine.reporting import print_metrics_table
    from hpff_dist.engine.runner_factory import build_runner

    require_checkpoint(args.checkpoint)  # before the config is read and the data found
    cfg = load_config(args.config, args.cfg_options, args.work_dir, args.data_root)
    cfg.launcher = args.launcher
    cfg.load_from, cfg.resume = args.checkpoint, False
    if args.partial_load:
        cfg.load_strict = False
    runner = build_runner(cfg)
    metrics = runner.test()
    if runner.rank != 0:  # metrics are gathered on every rank; one writer is enough
        return
    print_metrics_table(metrics, title=f"{os.path.basename(args.checkpoint)}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(metrics, f, indent=2)


if __name__ == "__main__":
    main()
