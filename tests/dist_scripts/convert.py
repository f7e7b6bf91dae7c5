"""Run under ``torchrun --nproc_per_node 2``: train 2 steps with ZeRO-2 (``build_runner``),
write the DeepSpeed checkpoint, and save (rank 0) the distributed model's logits on a fixed
batch plus the model config, for ``tests/test_convert_checkpoint.py`` to compare against the
converted checkpoint in one process. argv: work_dir, output .pt."""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(__file__))
from common import IMAGE, model_kwargs  # noqa: E402
from resume import _with, config  # noqa: E402  (registers RandomImages)

from hpff_dist.engine.runner_factory import build_runner  # noqa: E402


def main() -> None:
    work_dir, out = sys.argv[1], sys.argv[2]
    cfg = _with(config(work_dir, "convert"), train_cfg=dict(by_epoch=False, max_iters=2))
    runner = build_runner(cfg)
    runner.train()
    model = runner.model.module
    model.eval()
    images = torch.rand(6, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        logits = model(images)  # mode 'tensor': the learner's logits
    if dist.get_rank() == 0:
        torch.save({"images": images, "logits": logits, "model": model_kwargs("dgl_hpff")}, out)


if __name__ == "__main__":
    main()
