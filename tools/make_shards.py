"""Turn an ImageNet-layout folder (or any ImageFolder) into webdataset shards + DALI indexes.

    python tools/make_shards.py /data/imagenet /data/imagenet-wds --split train \\
        --shard-size 1GB --shuffle-seed 0 --workers 8
    python tools/make_shards.py /data/imagenet /data/imagenet-wds --split val --shard-size 1GB
    python tools/make_shards.py /data/cityscapes /data/cityscapes-wds --layout cityscapes \\
        --split train --shard-size 1GB --shuffle-seed 0 --workers 8

``--layout cityscapes`` shards (image, trainIds label map) pairs of the official Cityscapes
folders (any mmseg folder dataset with ``--dataset`` and ``--img-dir``/``--ann-dir``); every
pair is checked (both decode, same size, label values in the classes or 255) before it is
written, bytes unchanged.

``--shard-size`` is a sample count (``1000``) or a byte size (``500MB``, ``1GiB``). Every image is
decoded before it is written: a bad one stops the run, naming its source path, unless
``--max-bad N`` lets up to N be skipped (logged, and listed in the manifest). A killed run is
finished with ``--resume``: finished shards are checked and kept, truncated ones and the others
are (re)written. ``tools/check_shards.py`` checks a finished set. See docs/data.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from hpff_dist.data.cityscapes.folder import CityscapesLayoutError
from hpff_dist.data.imagenet.errors import BadSampleError, DataNotFoundError
from hpff_dist.data.imagenet.shards import make_split_shards, parse_shard_size

LAYOUTS = ("imagefolder", "cityscapes")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "src",
        help="SRC/<split>/<class>/*.JPEG, or an ImageFolder SRC/<class>/*; with --layout "
        "cityscapes the Cityscapes root (leftImg8bit/, gtFine/)",
    )
    parser.add_argument("out", help="output directory for <split>-%%06d.tar, .idx and manifests")
    parser.add_argument("--split", default="train", help="split to shard (default: train)")
    parser.add_argument(
        "--shard-size",
        default="1GB",
        type=parse_shard_size,
        help="samples per shard (1000) or bytes per shard (500MB); default 1GB",
    )
    parser.add_argument(
        "--shuffle-seed",
        type=int,
        default=None,
        help="seeded shuffle of samples across shards (default: sorted order)",
    )
    parser.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="imagefolder",
        help="imagefolder: (image, class) samples; cityscapes: (image, label map) pairs",
    )
    parser.add_argument(
        "--dataset",
        default="CityscapesDataset",
        help="--layout cityscapes: the mmseg dataset class that lists the pairs",
    )
    parser.add_argument("--img-dir", help="--layout cityscapes: images (default leftImg8bit/SPLIT)")
    parser.add_argument("--ann-dir", help="--layout cityscapes: label maps (default gtFine/SPLIT)")
    parser.add_argument("--workers", type=int, default=1, help="shards written in parallel")
    parser.add_argument(
        "--resume", action="store_true", help="keep finished shards, write the rest"
    )
    parser.add_argument(
        "--max-bad",
        type=int,
        default=0,
        help="images that fail to decode to skip (logged, listed in the manifest) before "
        "stopping; default 0: the first one stops the run",
    )
    parser.add_argument(
        "--no-check-images",
        action="store_true",
        help="write images without decoding them first (bad ones then surface in training)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    common = dict(
        resume=args.resume,
        shuffle_seed=args.shuffle_seed,
        workers=args.workers,
        progress=not args.no_progress,
        max_bad=args.max_bad,
    )
    try:
        if args.layout == "cityscapes":
            from hpff_dist.data.cityscapes.shards import make_seg_split_shards

            manifest = make_seg_split_shards(
                args.src,
                args.out,
                args.split,
                args.shard_size,
                dataset=args.dataset,
                img_dir=args.img_dir,
                ann_dir=args.ann_dir,
                check=not args.no_check_images,
                **common,
            )
        else:
            manifest = make_split_shards(
                args.src,
                args.out,
                args.split,
                args.shard_size,
                check_images=not args.no_check_images,
                **common,
            )
    except (BadSampleError, CityscapesLayoutError, DataNotFoundError) as error:
        print(f"make_shards: {error}", file=sys.stderr)
        return 1
    summary = {k: manifest[k] for k in ("split", "num_samples", "num_shards", "num_classes")}
    summary["skipped"] = len(manifest["skipped"])
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
