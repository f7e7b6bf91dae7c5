"""Evaluate a checkpoint: ``python tools/test.py CONFIG CHECKPOINT [--out results.json]``."""

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
    return p.parse_args()


def main() -> None:
    args = parse_args()
    from hpff_dist.engine.reporting import print_metrics_table
    from hpff_dist.engine.runner_factory import build_runner

    if not os.path.isfile(args.checkpoint):
        raise FileNotFoundError(f"checkpoint {args.checkpoint!r} does not exist")
    cfg = load_config(args.config, args.cfg_options, args.work_dir, args.data_root)
    cfg.launcher = args.launcher
    cfg.load_from, cfg.resume = args.checkpoint, False
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
