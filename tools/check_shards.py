"""Check a shard set made by tools/make_shards.py: every shard whole, counts as the manifest says.

    python tools/check_shards.py /data/imagenet-wds              # every split with a manifest
    python tools/check_shards.py /data/imagenet-wds --split val --decode --checksums

Prints one line per shard (samples found / in the manifest, and what is wrong), then a JSON
summary per split. Checks the tar structure (a truncated or damaged tar is found even where
Python's tarfile would stop quietly), the samples' members, the DALI index; ``--decode`` also
decodes every image with PIL. Exits 1 if anything is wrong, naming how to re-make it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hpff_dist.data.imagenet.shard_checks import REMAKE_HINT, ShardCheck, check_split
from hpff_dist.data.imagenet.shards import MANIFEST_PATTERN


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="the output directory of tools/make_shards.py")
    parser.add_argument("--split", action="append", help="split to check (default: all)")
    parser.add_argument("--decode", action="store_true", help="also decode every image (slow)")
    parser.add_argument(
        "--checksums",
        action="store_true",
        help="also compare every shard's SHA-256 with the manifest (reads every byte)",
    )
    return parser.parse_args(argv)


def splits_in(root: Path) -> list[str]:
    """Splits that have a manifest under ``root``."""
    prefix, suffix = MANIFEST_PATTERN.split("{split}")
    return sorted(
        p.name[len(prefix) : -len(suffix)] for p in root.glob(MANIFEST_PATTERN.format(split="*"))
    )


def describe(check: ShardCheck, expected: int) -> str:
    """One report line: name, samples found / expected, and every problem."""
    problems = [p for p in (check.problem, check.index_problem) if p]
    problems += [f"bad image {key}: {error}" for key, error in check.bad_images]
    status = "; ".join(problems) if problems else "ok"
    return f"{Path(check.path).name}  {len(check.keys)}/{expected} samples  {status}"


def check_one(root: Path, split: str, decode: bool, checksums: bool = False) -> bool:
    """Print the report of one split; True when every shard is fine."""
    manifest = json.loads((root / MANIFEST_PATTERN.format(split=split)).read_text())
    checks = check_split(root, split, decode, checksums)
    for check, record in zip(checks, manifest["shards"]):
        print(describe(check, int(record["nsamples"])))
    bad = [Path(c.path).name for c in checks if not c.ok]
    summary = {
        "split": split,
        "shards": len(checks),
        "samples": sum(len(c.keys) for c in checks),
        "manifest_samples": manifest["num_samples"],
        "bad_shards": bad,
    }
    print(json.dumps(summary))
    if bad:
        print(
            f"check_shards: {len(bad)} bad {split} shard(s): {', '.join(bad)}. "
            + REMAKE_HINT.format(split=split),
            file=sys.stderr,
        )
    return not bad


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = Path(args.root)
    splits = args.split or splits_in(root)
    if not splits:
        print(
            f"check_shards: no manifest-<split>.json under {root}; is it the output "
            "directory of tools/make_shards.py?",
            file=sys.stderr,
        )
        return 1
    results = [check_one(root, split, args.decode, args.checksums) for split in splits]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
