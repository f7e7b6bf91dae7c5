"""Train a model from a config: ``python tools/train.py CONFIG [--work-dir D] [--resume]``."""

from __future__ import annotations

import argparse
import json
import os
import time

from hpff_dist.engine.config import DictAction, load_config


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("config", help="experiment config file")
    p.add_argument("--work-dir", help="where logs and checkpoints go")
    p.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        metavar="PATH|auto",
        help="resume: with no value, the newest intact checkpoint of the work dir (an error "
        "when there is none); 'auto': that one if any, else start fresh (requeued jobs); "
        "PATH: that checkpoint",
    )
    p.add_argument(
        "--partial-load",
        action="store_true",
        help="load checkpoints non-strictly (missing/unexpected/mis-shaped keys are logged, "
        "not refused): config key load_strict=False",
    )
    p.add_argument("--data-root", help="dataset folder for the train, val and test loaders")
    p.add_argument("--launcher", choices=["none", "pytorch", "slurm"], default="none")
    p.add_argument("--cfg-options", nargs="+", action=DictAction, help="key=value overrides")
    p.add_argument("--no-test", action="store_true", help="skip the final test-set evaluation")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    start = time.perf_counter()
    from hpff_dist.engine.reporting import (
        format_table,
        jsonable_metrics,
        print_metrics_table,
        run_summary,
    )
    from hpff_dist.engine.runner_factory import build_runner

    cfg = load_config(args.config, args.cfg_options, args.work_dir, args.data_root)
    cfg.launcher = args.launcher
    if args.resume == "latest":
        cfg.resume, cfg.load_from = True, None
    elif args.resume == "auto":
        cfg.resume, cfg.load_from = "auto", None
    elif args.resume:
        cfg.resume, cfg.load_from = True, args.resume
    if args.partial_load:
        cfg.load_strict = False
    runner = build_runner(cfg)
    runner.train()
    metrics: dict[str, float] = {}
    if not args.no_test and cfg.get("test_dataloader") is not None:
        metrics = runner.test()
        if runner.rank == 0:
            print_metrics_table(metrics, title=f"test set: {os.path.basename(args.config)}")
            with open(os.path.join(cfg.work_dir, "test_metrics.json"), "w") as f:
                json.dump(jsonable_metrics(metrics), f, indent=2)
    if runner.rank == 0:
        summary = run_summary(runner, metrics, time.perf_counter() - start)
        with open(os.path.join(cfg.work_dir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
        rows = {k: str(v) for k, v in summary.items()}
        print(format_table(rows, f"run summary: {args.config}"), flush=True)


if __name__ == "__main__":
    main()
