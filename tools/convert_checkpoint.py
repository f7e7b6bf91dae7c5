"""A DeepSpeed checkpoint directory (ZeRO 0/1/2) -> one plain ``.pth`` anyone can load.

    python tools/convert_checkpoint.py work_dirs/r101/iter_5000.pth work_dirs/r101/r101_fp32.pth

The output holds ``state_dict`` (full fp32 weights, gathered from the ZeRO partitions with
DeepSpeed's ``zero_to_fp32``, and the BatchNorm buffers) and ``meta`` (config, epoch,
iteration, seed). ``tools/test.py CONFIG OUT.pth`` and ``load_from`` read it without DeepSpeed;
to resume training, keep the directory (it holds the optimizer partitions).

A pipelined run's directory (``strategy.pipeline``) holds one ``mp_rank_<stage>_model_states.pt``
per stage, each with that stage's modules: they are merged into the whole model (a stage
missing, or two holding the same weight, is an error).
"""

from __future__ import annotations

import argparse
import json
import os.path as osp
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="DeepSpeed checkpoint directory (WORK_DIR/iter_N.pth)")
    parser.add_argument("out", nargs="?", help="output file (default: <checkpoint>_fp32.pth)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from hpff_dist import compat
    from hpff_dist.engine.checkpoint_convert import consolidate
    from hpff_dist.engine.checkpoint_files import atomic_write

    compat.apply_all()
    source = args.checkpoint.rstrip("/")
    out = args.out or osp.splitext(source)[0] + "_fp32.pth"
    converted = consolidate(source)
    atomic_write(out, lambda partial: torch.save(converted, partial))
    meta = converted["meta"]
    summary = dict(
        out=out,
        tensors=len(converted["state_dict"]),
        zero_stage=meta["zero_stage"],
        pipeline_stages=meta.get("pipeline_stages", 1),
        epoch=meta.get("epoch"),
        iter=meta.get("iter"),
    )
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
