"""Images/s of an ImageNet loader backend (decode + augment), printed and saved as JSON.

    python tools/benchmark_loaders.py --data /data/imagenet-wds --backend dali --workers 8
    python tools/benchmark_loaders.py --synthetic 2000 --backend webdataset --workers 2

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
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hpff_dist.data.imagenet import build_imagenet_dataloader
from hpff_dist.data.imagenet.shards import make_split_shards, parse_shard_size


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


def benchmark(loader, iters: int, warmup: int) -> dict:
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="ImageNet folder (folder) or shard directory (others)")
    parser.add_argument("--synthetic", type=int, default=0, help="make N synthetic JPEGs first")
    parser.add_argument("--backend", choices=["folder", "webdataset", "dali"], required=True)
    parser.add_argument("--split", default="train")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="auto", help="DALI: auto | gpu | cpu")
    parser.add_argument("--out", help="also write the JSON result here")
    args = parser.parse_args(argv)
    if not args.data and not args.synthetic:
        parser.error("give --data DIR or --synthetic N")
    torch.set_num_threads(1)  # the workers, not intra-op threads, should do the work

    with tempfile.TemporaryDirectory(prefix="hpff_bench_") as tmp:
        data = Path(args.data or tmp)
        if args.synthetic and not (data / "shards" / "manifest-train.json").exists():
            make_synthetic(data, args.synthetic)
        root = data if args.backend == "folder" or not args.synthetic else data / "shards"
        loader = build_imagenet_dataloader(
            args.backend,
            str(root),
            args.split,
            batch_size=args.batch_size,
            num_workers=args.workers,
            train=args.split == "train",
            image_size=args.image_size,
            device=args.device,
            rank=0,
            world_size=1,
        )
        result = benchmark(loader, args.iters, args.warmup)
    result.update(
        backend=args.backend,
        workers=args.workers,
        batch_size=args.batch_size,
        image_size=args.image_size,
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
