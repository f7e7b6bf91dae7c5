"""Images/s of an ImageNet loader from a config (decode + augment), printed and saved as JSON.

    python tools/benchmark_loaders.py --data /data/imagenet-wds --backend dali --workers 8
    python tools/benchmark_loaders.py --synthetic 2000 --backend webdataset --workers 2
    python tools/benchmark_loaders.py --config configs/imagenet/resnet101_k4_infopro.py \
        --data /data/imagenet-wds --cfg-options train_dataloader.num_threads=16

The loader is the config's ``train_dataloader`` (``--split train``) or ``val_dataloader``, built
by ``hpff_dist.data.loader_builder.build_dataloader``, the route a training run takes: same
dataset, sampler, collate function and transforms. ``--backend B`` reads
``configs/_base_/datasets/imagenet_B.py``; ``--config`` any config with loaders (an experiment).
``--data`` is the ImageNet folder for ``folder`` and the shard directory for the others. With
``--synthetic N`` a tree of N random ImageNet-sized JPEGs (DIR/train/<class>/) and its shards
(DIR/shards) is made in ``--data`` (kept, reused by later runs) or in a temporary directory.
The first ``--warmup`` batches (worker start-up, DALI graph build) are not timed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mmengine.config import Config, DictAction
from PIL import Image

import hpff_dist.data  # noqa: F401  (registers the datasets, samplers and collate functions)
from hpff_dist.data.imagenet import BACKENDS
from hpff_dist.data.imagenet.shards import make_split_shards, parse_shard_size
from hpff_dist.data.loader_builder import build_dataloader, with_loader_args

REPO = Path(__file__).resolve().parents[1]


def make_synthetic(root: Path, num_images: int, num_classes: int = 10, seed: int = 0) -> Path:
    """ImageNet-like JPEGs (~ 500x375, smooth content, quality 90) in root/train/<class>/."""
    rng = np.random.default_rng(seed)
    for i in range(num_images):
        folder = root / "train" / f"n{i % num_classes:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        h, w = (int(v) for v in rng.integers(300, 500, 2))
        small = (rng.random((h // 16, w // 16, 3)) * 255).astype(np.uint8)
        Image.fromarray(small).resize((w, h), Image.BICUBIC).save(folder / f"{i}.JPEG", quality=90)
    make_split_shards(root, root / "shards", "train", parse_shard_size("100MB"), progress=False)
    return root


def benchmark(loader: Iterable, iters: int, warmup: int) -> dict:
    """Time ``iters`` batches after ``warmup`` batches; epochs restart as needed."""
    images, batches, start = 0, 0, None
    while batches < iters + warmup:
        for x, _ in loader:
            batches += 1
            if batches == warmup:
                start = time.perf_counter()
            elif batches > warmup:
                images += x.shape[0]
            if batches >= iters + warmup:
                break
    seconds = time.perf_counter() - start
    return {
        "images": images,
        "seconds": round(seconds, 3),
        "images_per_s": round(images / seconds, 1),
    }


def backend_of(loader_cfg: dict) -> str:
    """Which of the three backends a loader config entry reads with."""
    if loader_cfg.get("type") == "DaliImageNetLoader":
        return "dali"
    return "folder" if loader_cfg["dataset"]["type"] == "ImageNetFolder" else "webdataset"


def loader_config(args: argparse.Namespace) -> dict[str, Any]:
    """The config's loader entry for ``--split``, with the command line's settings applied."""
    path = args.config or REPO / f"configs/_base_/datasets/imagenet_{args.backend}.py"
    cfg = Config.fromfile(str(path))
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    loader = cfg.to_dict()["train_dataloader" if args.split == "train" else "val_dataloader"]
    backend = backend_of(loader)
    values: dict[str, Any] = {"split": args.split, "batch_size": args.batch_size}
    if args.image_size is not None:
        values["image_size"] = args.image_size
    if backend == "dali":
        values.update(num_threads=max(args.workers, 1), device=args.device)
    else:
        values.update(num_workers=args.workers, pin_memory=torch.cuda.is_available())
    return with_loader_args(loader, **values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="ImageNet folder (folder) or shard directory (others)")
    parser.add_argument("--synthetic", type=int, default=0, help="make N synthetic JPEGs first")
    parser.add_argument("--backend", choices=BACKENDS, help="configs/_base_/datasets/imagenet_*")
    parser.add_argument("--config", help="a config with loaders (instead of --backend)")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, help="key=value overrides")
    parser.add_argument("--split", default="train", choices=["train", "val"])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, help="default: the config's")
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0, help="sampler seed (the Runner's seed)")
    parser.add_argument("--device", default="auto", help="DALI: auto | gpu | cpu")
    parser.add_argument("--out", help="also write the JSON result here")
    args = parser.parse_args(argv)
    if not args.data and not args.synthetic:
        parser.error("give --data DIR or --synthetic N")
    if (args.backend is None) == (args.config is None):
        parser.error("give exactly one of --backend B and --config FILE")
    torch.set_num_threads(1)  # the workers, not intra-op threads, should do the work

    with tempfile.TemporaryDirectory(prefix="hpff_bench_") as tmp:
        data = Path(args.data or tmp)
        if args.synthetic and not (data / "shards" / "manifest-train.json").exists():
            make_synthetic(data, args.synthetic)
        cfg = loader_config(args)
        backend = backend_of(cfg)
        root = data if backend == "folder" or not args.synthetic else data / "shards"
        cfg = with_loader_args(cfg, root=str(root))
        loader = build_dataloader(cfg, seed=args.seed)
        result = benchmark(loader, args.iters, args.warmup)
    result.update(
        backend=backend,
        config=str(args.config or f"configs/_base_/datasets/imagenet_{backend}.py"),
        workers=args.workers,
        batch_size=args.batch_size,
        image_size=cfg.get("image_size", cfg.get("dataset", {}).get("image_size")),
        split=args.split,
        synthetic=args.synthetic,
        device=("gpu" if torch.cuda.is_available() and args.device != "cpu" else "cpu"),
        cpus=os.cpu_count(),
        machine=platform.processor() or platform.machine(),
    )
    print(json.dumps(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
