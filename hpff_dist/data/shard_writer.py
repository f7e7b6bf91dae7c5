"""Writing a split into webdataset shards: plan, write atomically, resume, verify, manifest.

One driver for every kind of shard set; what a sample *is* (an ImageNet JPEG and its class, a
Cityscapes image and its label map) is a :class:`ShardLayout`. Layout written into ``OUT`` for
a split (``train`` shown)::

    train-000000.tar     the samples, members as the layout makes them
    train-000000.idx     DALI index (``wds2idx`` format, written by DALI's own ``wds2idx`` tool)
    train-wids.json      wids dataset descriptor (``wids.ShardListDataset`` opens it directly)
    manifest-train.json  shard list (sample count, size and SHA-256 of each), sample counts,
                         the layout's own summary, plan fingerprint, the source samples
                         skipped because they are bad
    classes.json         class index -> name

The whole split is planned before anything is written, so shard ``i`` always holds the same
samples for the same arguments: that makes ``--resume`` safe (a finished shard is kept once
:func:`~hpff_dist.data.imagenet.shard_checks.check_shard` finds it whole, a truncated one is
rewritten, a half-written one was never renamed from ``*.tar.tmp``) and makes shards
reproducible. Every sample is checked by its layout before it is written (bytes are stored
unchanged): a bad one is reported with its source path, and skipped within a budget
(``max_bad``) or stops the run.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from multiprocessing import Pool
from pathlib import Path
from typing import Any, Protocol

import webdataset as wds
from tqdm import tqdm

from hpff_dist.data.imagenet.errors import LOGGER, BadSampleError

SHARD_PATTERN = "{split}-{index:06d}.tar"
MANIFEST_PATTERN = "manifest-{split}.json"
WIDS_PATTERN = "{split}-wids.json"
CLASSES_FILE = "classes.json"
TAR_BLOCK = 512
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


@dataclass(frozen=True)
class ShardSize:
    """A shard limit: ``value`` samples or ``value`` bytes."""

    value: int
    unit: str  # "samples" | "bytes"


def parse_shard_size(text: str) -> ShardSize:
    """``"1000"`` -> 1000 samples; ``"500MB"``/``"1GiB"``/``"4096B"`` -> bytes."""
    match = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", str(text))
    if not match:
        raise ValueError(f"shard size {text!r}: expected e.g. 1000 (samples) or 500MB (bytes)")
    value, unit = int(match.group(1)), match.group(2).lower()
    if value < 1:
        raise ValueError(f"shard size must be positive, got {text!r}")
    if not unit:
        return ShardSize(value, "samples")
    if unit not in _UNITS:
        raise ValueError(f"shard size unit {unit!r} not in {sorted(_UNITS)}")
    return ShardSize(value * _UNITS[unit], "bytes")


def tar_bytes(member_sizes: Sequence[int]) -> int:
    """Bytes a sample takes in a tar, a header + padded payload per member: what a byte-sized
    shard limit counts."""
    return sum(TAR_BLOCK + -(-n // TAR_BLOCK) * TAR_BLOCK for n in member_sizes)


class PlannedSample(Protocol):
    """What the driver needs of a source sample; each layout has its own dataclass."""

    key: str
    path: str  # the source file named in reports (the image)

    @property
    def tar_bytes(self) -> int: ...

    @property
    def plan_line(self) -> str: ...


class ShardLayout(Protocol):
    """How one kind of source sample becomes tar members, and how it is checked."""

    #: non-image members every sample has (``check_shard`` requires them); in the manifest
    members: tuple[str, ...]

    def read(self, sample: Any, check: bool) -> tuple[dict[str, bytes], str | None]:
        """The sample's members (``{ext: bytes}``), or why it is bad (``({}, reason)``)."""

    def read_back(self, tar_path: str) -> list:
        """What :func:`verify_split` reads back from a written shard, in order."""

    def expected(self, sample: Any) -> Any:
        """The item of :meth:`read_back` that ``sample`` must give."""

    def summary(self, written: Sequence[Any], classes: Sequence[str]) -> dict:
        """The layout's own manifest entries (counts per class, ...)."""


def plan_shards(
    samples: Sequence[PlannedSample], shard_size: ShardSize, shuffle_seed: int | None = None
) -> list[list]:
    """Group samples into shards; sorted order, or a seeded shuffle (train shards want mixing)."""
    ordered = list(samples)
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(ordered)
    shards: list[list] = []
    current: list = []
    current_bytes = 0
    for sample in ordered:
        cost = 1 if shard_size.unit == "samples" else sample.tar_bytes
        if current and current_bytes + cost > shard_size.value:
            shards.append(current)
            current, current_bytes = [], 0
        current.append(sample)
        current_bytes += cost
    if current:
        shards.append(current)
    return shards


def plan_fingerprint(shards: Sequence[Sequence[PlannedSample]]) -> str:
    """Hash of the plan: ``--resume`` refuses to mix shards of two different plans."""
    digest = hashlib.sha256()
    for index, shard in enumerate(shards):
        for s in shard:
            digest.update(f"{index}\t{s.plan_line}\n".encode())
    return digest.hexdigest()


def bad_sample_entry(sample: PlannedSample, shard: str, error: str) -> dict:
    """How a skipped source sample is logged and listed in the manifest."""
    return {"path": sample.path, "key": sample.key, "shard": shard, "error": error}


def too_many_bad_samples(entry: dict, count: int, max_bad: int) -> BadSampleError:
    return BadSampleError(
        f"bad sample {entry['path']} ({entry['error']}): bad sample {count} exceeds max_bad="
        f"{max_bad}. Replace or delete it and rerun into an empty output directory, or rerun "
        "with --resume --max-bad N (tools/make_shards.py) to skip up to N bad samples; skipped "
        "ones are logged and listed under 'skipped' in the split's manifest."
    )


def index_path_for(tar_path: str) -> str:
    return tar_path[: -len(".tar")] + ".idx"


def file_sha256(path: str) -> str:
    """The SHA-256 of a file, read in 1 MiB blocks."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _record(tar_path: str, nsamples: int) -> dict:
    """A shard's manifest entry; the checksum lets ``tools/check_shards.py --checksums`` prove
    a copy (on another file system, after a transfer) byte-identical to what was written."""
    return {
        "url": os.path.basename(tar_path),
        "index": os.path.basename(index_path_for(tar_path)),
        "nsamples": nsamples,
        "filesize": os.path.getsize(tar_path),
        "sha256": file_sha256(tar_path),
    }


def write_dali_index(tar_path: str, index_creator: type | None = None) -> str:
    """DALI index next to the shard, written atomically with DALI's ``wds2idx.IndexCreator``."""
    if index_creator is None:
        from wds2idx import IndexCreator as index_creator
    final = index_path_for(tar_path)
    tmp = final + ".tmp"
    with index_creator(tar_path, tmp, verbose=False) as creator:
        creator.create_index()
    os.replace(tmp, final)
    return final


def write_json(path: str | Path, data: dict) -> None:
    """Atomic JSON write: a killed run never leaves half a manifest."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def write_shard(
    tar_path: str,
    samples: Sequence[PlannedSample],
    layout: ShardLayout,
    max_bad: int = 0,
    check: bool = True,
) -> tuple[dict, list[dict]]:
    """Write one shard atomically (``*.tmp`` then rename) and its DALI index.

    Returns its record and the samples skipped as bad; more than ``max_bad`` of them in this
    shard alone stop here (the caller counts across shards).
    """
    from wds2idx import IndexCreator  # DALI's own index writer, shipped with nvidia-dali

    tmp = tar_path + ".tmp"
    try:
        skipped = _write_tar(tmp, samples, os.path.basename(tar_path), layout, max_bad, check)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    os.replace(tmp, tar_path)
    write_dali_index(tar_path, IndexCreator)
    return _record(tar_path, len(samples) - len(skipped)), skipped


def _write_tar(
    path: str,
    samples: Sequence[PlannedSample],
    shard: str,
    layout: ShardLayout,
    max_bad: int,
    check: bool,
) -> list[dict]:
    """Write the samples' members, leaving out the bad ones."""
    skipped: list[dict] = []
    with open(path, "wb") as stream, wds.TarWriter(stream, encoder=False, mtime=0) as writer:
        for s in samples:
            members, error = layout.read(s, check)
            if error:
                skipped.append(bad_sample_entry(s, shard, error))
                if len(skipped) > max_bad:
                    raise too_many_bad_samples(skipped[-1], len(skipped), max_bad)
                continue
            writer.write({"__key__": s.key, **members})
    return skipped


def _write_task(task: tuple) -> tuple[dict, list[dict]]:
    return write_shard(*task)


def _finished_shard(
    tar_path: str, samples: Sequence[PlannedSample], layout: ShardLayout, check: bool
) -> tuple[dict, list[dict]] | None:
    """Record and skipped samples of a finished shard kept by ``--resume``; None to rewrite it.

    A shard is kept when its tar is whole, holds only planned samples, and every planned sample
    it lacks is still bad (it was skipped as bad when the shard was written).
    """
    from hpff_dist.data.imagenet.shard_checks import check_shard  # imports this module

    name = os.path.basename(tar_path)
    found_check = check_shard(tar_path, members=layout.members)
    found = set(found_check.keys)
    planned = {s.key for s in samples}
    if found_check.problem is None and not found <= planned:
        found_check.problem = "it holds samples that are not in the plan"
    missing = [s for s in samples if s.key not in found]
    errors = [layout.read(s, True)[1] if check else None for s in missing]
    if found_check.problem is None and not all(errors):
        found_check.problem = f"it lacks {errors.count(None)} planned sample(s) that are good"
    if found_check.problem:
        LOGGER.warning("--resume: rewriting %s: %s", tar_path, found_check.problem)
        return None
    if found_check.index_problem:  # killed between the tar rename and the index rename
        write_dali_index(tar_path)
    skipped = [bad_sample_entry(s, name, e) for s, e in zip(missing, errors)]
    return _record(tar_path, len(found)), skipped


def verify_split(
    out: Path,
    shards: Sequence[Sequence[PlannedSample]],
    records: Sequence[dict],
    layout: ShardLayout,
    skipped: Sequence[dict] = (),
) -> None:
    """Read every shard back and compare with the plan; raise on a mismatch."""
    left_out = {entry["key"] for entry in skipped}
    for shard, record in zip(shards, records):
        expected = [layout.expected(s) for s in shard if s.key not in left_out]
        got = layout.read_back(str(out / record["url"]))
        if got != expected:
            missing = [e for e in expected if e not in set(got)][:3]
            raise RuntimeError(
                f"{record['url']}: {len(got)} samples read back, {len(expected)} planned "
                f"(first missing/different: {missing}); delete it and rerun with --resume"
            )


def _count_bad(skipped: list[dict], new: Sequence[dict], max_bad: int) -> None:
    """Add one shard's skipped samples to the run's, logging each; raise past ``max_bad``."""
    for entry in new:
        skipped.append(entry)
        if len(skipped) > max_bad:
            raise too_many_bad_samples(entry, len(skipped), max_bad)
        LOGGER.warning(
            "skipped bad sample %d/%d: %s (%s): %s",
            len(skipped),
            max_bad,
            entry["path"],
            entry["shard"],
            entry["error"],
        )


def write_classes(out: Path, classes: Sequence[str], source: str) -> None:
    """``classes.json``; every split of a set must list the same classes."""
    class_map = {str(i): name for i, name in enumerate(classes)}
    path = out / CLASSES_FILE
    if path.exists():
        with open(path) as f:
            if json.load(f) != class_map:
                raise ValueError(f"{path} lists other classes than {source}")
    else:
        write_json(path, class_map)


def write_split_shards(
    samples: Sequence[PlannedSample],
    classes: Sequence[str],
    out: str | Path,
    split: str,
    shard_size: ShardSize,
    layout: ShardLayout,
    *,
    source: str = "the source",
    resume: bool = False,
    shuffle_seed: int | None = None,
    workers: int = 1,
    progress: bool = True,
    max_bad: int = 0,
    check: bool = True,
) -> dict:
    """Shard ``samples`` of one split into ``out``; return (and write) its manifest.

    ``max_bad`` bad samples are skipped (logged with their source path, listed in the
    manifest); one more stops the run. ``check=False`` writes samples unchecked.
    """
    if max_bad < 0:
        raise ValueError(f"max_bad must be >= 0, got {max_bad}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_classes(out, classes, f"{source} ({split})")

    shards = plan_shards(samples, shard_size, shuffle_seed)
    fingerprint = plan_fingerprint(shards)
    plan_path = out / f".{split}-plan.json"
    existing = sorted(out.glob(f"{split}-*.tar"))
    if existing and not resume:
        raise FileExistsError(
            f"{out} already has {len(existing)} {split} shard(s); pass --resume to finish them "
            "or choose an empty output directory"
        )
    if resume and plan_path.exists():
        with open(plan_path) as f:
            if json.load(f)["fingerprint"] != fingerprint:
                raise ValueError(
                    f"--resume: the shards in {out} were planned from other data or arguments "
                    "(plan fingerprint differs); use an empty output directory"
                )
    write_json(plan_path, {"fingerprint": fingerprint})

    tars = [str(out / SHARD_PATTERN.format(split=split, index=i)) for i in range(len(shards))]
    records: list[dict | None] = [None] * len(shards)
    skipped: list[dict] = []
    todo = []
    for i, (tar, shard) in enumerate(zip(tars, shards)):
        kept = (
            _finished_shard(tar, shard, layout, check) if resume and os.path.isfile(tar) else None
        )
        if kept is None:
            todo.append(i)
            continue
        records[i] = kept[0]
        _count_bad(skipped, kept[1], max_bad)
    bar = tqdm(
        total=len(shards),
        initial=len(shards) - len(todo),
        unit="shard",
        desc=f"{split} shards",
        disable=not progress,
    )
    tasks = [(tars[i], shards[i], layout, max_bad, check) for i in todo]
    if workers > 1 and len(tasks) > 1:
        with Pool(workers) as pool:
            for i, (record, bad) in zip(todo, pool.imap(_write_task, tasks)):
                records[i] = record
                _count_bad(skipped, bad, max_bad)
                bar.update()
    else:
        for i, task in zip(todo, tasks):
            records[i], bad = _write_task(task)
            _count_bad(skipped, bad, max_bad)
            bar.update()
    bar.close()

    verify_split(out, shards, records, layout, skipped)
    left_out = {entry["key"] for entry in skipped}
    written = [s for shard in shards for s in shard if s.key not in left_out]
    manifest = {
        "format": "hpff_dist.shards/1",
        "split": split,
        "members": list(layout.members),
        "num_samples": len(written),
        "num_shards": len(shards),
        "num_classes": len(classes),
        **layout.summary(written, classes),
        "shards": list(records),
        "skipped": sorted(skipped, key=lambda entry: entry["key"]),
        "plan": {
            "fingerprint": fingerprint,
            "shard_size": asdict(shard_size),
            "seed": shuffle_seed,
        },
    }
    write_json(out / MANIFEST_PATTERN.format(split=split), manifest)
    wids_spec = {
        "wids_version": 1,
        "name": split,
        "shardlist": [
            {"url": r["url"], "nsamples": r["nsamples"], "filesize": r["filesize"]} for r in records
        ],
    }
    write_json(out / WIDS_PATTERN.format(split=split), wids_spec)
    return manifest
