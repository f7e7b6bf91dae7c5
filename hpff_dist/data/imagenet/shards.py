"""Webdataset shards of an ImageFolder tree: planning, writing, verifying, and finding them again.

Layout written into ``OUT`` for a split (``train`` shown)::

    train-000000.tar   samples ``<key>.jpg`` + ``<key>.cls`` (ASCII class index, for webdataset
                       and wids) + ``<key>.label`` (little-endian int32, because DALI's
                       ``fn.readers.webdataset`` cannot parse ASCII)
    train-000000.idx   DALI index (``wds2idx`` format, written by DALI's own ``wds2idx`` tool)
    train-wids.json    wids dataset descriptor (``wids.ShardListDataset`` can open it directly)
    manifest-train.json  shard list, sample counts per split and per class, plan fingerprint,
                       the source images skipped because they do not decode
    classes.json       class index -> wnid / folder name

The whole split is planned before anything is written, so shard ``i`` always holds the same
samples for the same arguments: that makes ``--resume`` safe (a finished shard is kept once
:func:`~hpff_dist.data.imagenet.shard_checks.check_shard` finds it whole, a truncated one is
rewritten, a half-written one was never renamed from ``*.tar.tmp``) and makes shards reproducible.
Every image is decoded before it is written (the bytes are stored unchanged): an image that does
not decode is reported with its source path, and skipped within a budget (``max_bad``) or stops
the run.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import tarfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import webdataset as wds
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset
from tqdm import tqdm

from hpff_dist.data.imagenet.errors import (
    LOGGER,
    MAKE_SHARDS_HINT,
    BadSampleError,
    DataNotFoundError,
)

SHARD_PATTERN = "{split}-{index:06d}.tar"
MANIFEST_PATTERN = "manifest-{split}.json"
WIDS_PATTERN = "{split}-wids.json"
CLASSES_FILE = "classes.json"
IMAGE_EXTS = "jpg;jpeg;png;webp;bmp"  # what the readers accept as the image of a sample
TAR_BLOCK = 512
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


@dataclass(frozen=True)
class SourceSample:
    """One image of the source tree, and the key it gets inside a shard."""

    path: str
    label: int
    key: str
    ext: str
    size: int


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


def split_source_dir(src: str | Path, split: str) -> Path:
    """``SRC/<split>`` for an ImageNet layout, else ``SRC`` itself when it is an ImageFolder."""
    src = Path(src)
    if (src / split).is_dir():
        return src / split
    if src.is_dir() and any(p.is_dir() for p in src.iterdir()) and not (src / "train").exists():
        return src
    raise DataNotFoundError(
        f"no {split!r} images under {src}: expected {src}/{split}/<class>/*.JPEG (ImageNet layout; "
        f"the val split must be sorted into class folders too) or {src}/<class>/*.jpg"
    )


def _key_for(root: Path, path: str) -> str:
    """``<class>/<stem>`` with dots replaced: readers split the extension at the first dot."""
    rel = Path(path).relative_to(root)
    return str(rel.with_suffix("")).replace(".", "_")


def _ext_for(path: str) -> str:
    ext = Path(path).suffix.lower().lstrip(".")
    return "jpg" if ext in ("jpg", "jpeg") else ext


def list_image_folder(root: str | Path) -> tuple[list[str], list[SourceSample]]:
    """Classes (sorted folder names) and samples (sorted paths) as torchvision's ImageFolder sees them."""
    root = Path(root)
    classes, class_to_idx = find_classes(str(root))
    items = make_dataset(str(root), class_to_idx, extensions=IMG_EXTENSIONS)
    samples = [
        SourceSample(path, label, _key_for(root, path), _ext_for(path), os.path.getsize(path))
        for path, label in items
    ]
    keys = Counter(s.key for s in samples)
    duplicated = [k for k, n in keys.items() if n > 1]
    if duplicated:
        raise ValueError(f"two images map to the same shard key, e.g. {duplicated[:3]}")
    return classes, samples


def _tar_bytes(sample: SourceSample) -> int:
    """Bytes a sample takes in a tar: a header + padded payload for each of its 3 members."""
    padded = -(-sample.size // TAR_BLOCK) * TAR_BLOCK
    return 3 * TAR_BLOCK + padded + 2 * TAR_BLOCK


def plan_shards(
    samples: Sequence[SourceSample], shard_size: ShardSize, shuffle_seed: int | None = None
) -> list[list[SourceSample]]:
    """Group samples into shards; sorted order, or a seeded shuffle (train shards want mixing)."""
    ordered = list(samples)
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(ordered)
    shards: list[list[SourceSample]] = []
    current: list[SourceSample] = []
    current_bytes = 0
    for sample in ordered:
        cost = 1 if shard_size.unit == "samples" else _tar_bytes(sample)
        if current and current_bytes + cost > shard_size.value:
            shards.append(current)
            current, current_bytes = [], 0
        current.append(sample)
        current_bytes += cost
    if current:
        shards.append(current)
    return shards


def plan_fingerprint(shards: Sequence[Sequence[SourceSample]]) -> str:
    """Hash of the plan: ``--resume`` refuses to mix shards of two different plans."""
    digest = hashlib.sha256()
    for index, shard in enumerate(shards):
        for s in shard:
            digest.update(f"{index}\t{s.key}\t{s.ext}\t{s.label}\t{s.size}\n".encode())
    return digest.hexdigest()


def label_bytes(label: int) -> bytes:
    """The ``.label`` member: one little-endian int32, what DALI reads with ``dtypes=INT32``."""
    return np.asarray([label], dtype="<i4").tobytes()


def decode_error(data: bytes) -> str | None:
    """Why PIL cannot decode ``data`` as an image, or None: every shard image must decode."""
    from PIL import Image

    if not data:
        return "empty file"
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.draft("RGB", (64, 64))  # DCT-domain downscale: every scan is still entropy-decoded
            im.load()
    except Exception as error:  # noqa: BLE001 - any decoder failure marks the image bad
        return f"{type(error).__name__}: {error}"
    return None


def bad_image_entry(sample: SourceSample, shard: str, error: str) -> dict:
    """How a skipped source image is logged and listed in the manifest."""
    return {"path": sample.path, "key": sample.key, "shard": shard, "error": error}


def too_many_bad_images(entry: dict, count: int, max_bad: int) -> BadSampleError:
    return BadSampleError(
        f"bad image {entry['path']} ({entry['error']}): bad image {count} exceeds max_bad="
        f"{max_bad}. Replace or delete it and rerun into an empty output directory, or rerun "
        "with --resume --max-bad N (tools/make_shards.py) to skip up to N bad images; skipped "
        "ones are logged and listed under 'skipped' in the split's manifest."
    )


def _record(tar_path: str, nsamples: int) -> dict:
    return {
        "url": os.path.basename(tar_path),
        "index": os.path.basename(index_path_for(tar_path)),
        "nsamples": nsamples,
        "filesize": os.path.getsize(tar_path),
    }


def write_shard(
    tar_path: str, samples: Sequence[SourceSample], max_bad: int = 0, check_images: bool = True
) -> tuple[dict, list[dict]]:
    """Write one shard atomically (``*.tmp`` then rename) and its DALI index.

    Returns its record and the images skipped because they do not decode; more than
    ``max_bad`` of them in this shard alone stop here (the caller counts across shards).
    """
    from wds2idx import IndexCreator  # DALI's own index writer, shipped with nvidia-dali

    tmp = tar_path + ".tmp"
    try:
        skipped = _write_tar(tmp, samples, os.path.basename(tar_path), max_bad, check_images)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    os.replace(tmp, tar_path)
    write_dali_index(tar_path, IndexCreator)
    return _record(tar_path, len(samples) - len(skipped)), skipped


def _write_tar(
    path: str, samples: Sequence[SourceSample], shard: str, max_bad: int, check_images: bool
) -> list[dict]:
    """Write the samples' original bytes, leaving out images that do not decode."""
    skipped: list[dict] = []
    with open(path, "wb") as stream, wds.TarWriter(stream, encoder=False, mtime=0) as writer:
        for s in samples:
            with open(s.path, "rb") as f:
                image = f.read()
            error = decode_error(image) if check_images else None
            if error:
                skipped.append(bad_image_entry(s, shard, error))
                if len(skipped) > max_bad:
                    raise too_many_bad_images(skipped[-1], len(skipped), max_bad)
                continue
            writer.write(
                {
                    "__key__": s.key,
                    s.ext: image,
                    "cls": b"%d" % s.label,
                    "label": label_bytes(s.label),
                }
            )
    return skipped


def index_path_for(tar_path: str) -> str:
    return tar_path[: -len(".tar")] + ".idx"


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


def read_dali_index(idx_path: str) -> list[list[tuple[str, int, int]]]:
    """Parse a ``wds2idx`` v1.2 index: per sample, ``(ext, data_offset, size)`` per component."""
    with open(idx_path) as f:
        header = f.readline().split()
        if len(header) != 2 or header[0] != "v1.2":
            raise ValueError(f"{idx_path}: not a DALI v1.2 webdataset index (header {header})")
        samples = []
        for line in f:
            fields = line.split()
            # v1.2 components are "ext offset size name" quadruples
            samples.append(
                [
                    (fields[i], int(fields[i + 1]), int(fields[i + 2]))
                    for i in range(0, len(fields), 4)
                ]
            )
    if len(samples) != int(header[1]):
        raise ValueError(f"{idx_path}: header says {header[1]} samples, found {len(samples)}")
    return samples


def read_labels(tar_path: str) -> Iterator[tuple[str, int]]:
    """``(key, label)`` of every sample, read from the ``.label`` members at their indexed offsets."""
    with open(tar_path, "rb") as f:
        for components in read_dali_index(index_path_for(tar_path)):
            offsets = {ext: (offset, size) for ext, offset, size in components}
            offset, size = offsets["label"]
            f.seek(offset - TAR_BLOCK)
            name = tarfile.TarInfo.frombuf(f.read(TAR_BLOCK), "utf-8", "surrogateescape").name
            f.seek(offset)
            (label,) = np.frombuffer(f.read(size), dtype="<i4")
            yield name[: -len(".label")], int(label)


def write_json(path: str | Path, data: dict) -> None:
    """Atomic JSON write: a killed run never leaves half a manifest."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def load_manifest(root: str | Path, split: str) -> dict:
    """The manifest of ``split`` under ``root``; a clear error when the shards are not there."""
    root = Path(root)
    path = root / MANIFEST_PATTERN.format(split=split)
    if not root.is_dir():
        raise DataNotFoundError(f"shard directory {root} does not exist. {MAKE_SHARDS_HINT}")
    if not path.is_file():
        found = sorted(p.name for p in root.glob(f"{split}-*.tar"))
        state = f"found {len(found)} shard(s) but no manifest" if found else "found no shards"
        raise DataNotFoundError(
            f"{root}: {state} for split {split!r} (expected {path.name} next to "
            f"{SHARD_PATTERN.format(split=split, index=0)}, ...). {MAKE_SHARDS_HINT}"
        )
    with open(path) as f:
        manifest = json.load(f)
    for record in manifest["shards"]:
        tar = root / record["url"]
        if not tar.is_file():
            raise DataNotFoundError(f"{tar} is listed in {path} but missing. {MAKE_SHARDS_HINT}")
    return manifest


@dataclass
class ShardedSplit:
    """Absolute shard/index paths and counts of one split, as the loaders need them."""

    split: str
    tars: list[str]
    indexes: list[str]
    nsamples: list[int]
    classes: list[str]
    filesizes: list[int] | None = None  # as the manifest recorded them

    @property
    def num_samples(self) -> int:
        return sum(self.nsamples)

    def wids_shardlist(self) -> list[dict]:
        return [{"url": t, "nsamples": n} for t, n in zip(self.tars, self.nsamples)]


def find_split(root: str | Path, split: str) -> ShardedSplit:
    """Locate the shards of ``split`` under ``root`` through its manifest."""
    root = Path(root)
    manifest = load_manifest(root, split)
    records = manifest["shards"]
    classes_path = root / CLASSES_FILE
    with open(classes_path) as f:
        class_map = json.load(f)
    return ShardedSplit(
        split=split,
        tars=[str((root / r["url"]).resolve()) for r in records],
        indexes=[str((root / r["index"]).resolve()) for r in records],
        nsamples=[int(r["nsamples"]) for r in records],
        classes=[class_map[str(i)] for i in range(len(class_map))],
        filesizes=[int(r["filesize"]) for r in records] if "filesize" in records[0] else None,
    )


def manifest_for(
    split: str,
    shards: Sequence[Sequence[SourceSample]],
    records: Sequence[dict],
    classes: Sequence[str],
    fingerprint: str,
    shard_size: ShardSize,
    shuffle_seed: int | None,
    skipped: Sequence[dict] = (),
) -> dict:
    left_out = {entry["key"] for entry in skipped}
    written = [s for shard in shards for s in shard if s.key not in left_out]
    per_class = Counter(classes[s.label] for s in written)
    return {
        "format": "hpff_dist.shards/1",
        "split": split,
        "num_samples": len(written),
        "num_shards": len(shards),
        "num_classes": len(classes),
        "per_class": dict(sorted(per_class.items())),
        "shards": list(records),
        "skipped": sorted(skipped, key=lambda entry: entry["key"]),
        "plan": {
            "fingerprint": fingerprint,
            "shard_size": asdict(shard_size),
            "seed": shuffle_seed,
        },
    }


def _write_task(task: tuple[str, list[SourceSample], int, bool]) -> tuple[dict, list[dict]]:
    return write_shard(*task)


def _finished_shard(
    tar_path: str, samples: Sequence[SourceSample], check_images: bool
) -> tuple[dict, list[dict]] | None:
    """Record and skipped images of a finished shard kept by ``--resume``; None to rewrite it.

    A shard is kept when its tar is whole, holds only planned samples, and every planned sample
    it lacks still fails to decode (it was skipped as bad when the shard was written).
    """
    from hpff_dist.data.imagenet.shard_checks import check_shard  # imports this module

    name = os.path.basename(tar_path)
    check = check_shard(tar_path)
    found = set(check.keys)
    planned = {s.key for s in samples}
    if check.problem is None and not found <= planned:
        check.problem = "it holds samples that are not in the plan"
    missing = [s for s in samples if s.key not in found]
    errors = [_decode_file(s.path) if check_images else None for s in missing]
    if check.problem is None and not all(errors):
        check.problem = f"it lacks {errors.count(None)} planned sample(s) that decode"
    if check.problem:
        LOGGER.warning("--resume: rewriting %s: %s", tar_path, check.problem)
        return None
    if check.index_problem:  # killed between the tar rename and the index rename
        write_dali_index(tar_path)
    skipped = [bad_image_entry(s, name, e) for s, e in zip(missing, errors)]
    return _record(tar_path, len(found)), skipped


def _decode_file(path: str) -> str | None:
    with open(path, "rb") as f:
        return decode_error(f.read())


def verify_split(
    out: Path,
    shards: Sequence[Sequence[SourceSample]],
    records: Sequence[dict],
    skipped: Sequence[dict] = (),
) -> None:
    """Read every shard's keys and int32 labels back and compare with the plan; raise on mismatch."""
    left_out = {entry["key"] for entry in skipped}
    for shard, record in zip(shards, records):
        expected = [(s.key, s.label) for s in shard if s.key not in left_out]
        got = list(read_labels(str(out / record["url"])))
        if got != expected:
            missing = sorted(set(expected) - set(got))[:3]
            raise RuntimeError(
                f"{record['url']}: {len(got)} samples read back, {len(expected)} planned "
                f"(first missing/different: {missing}); delete it and rerun with --resume"
            )


def make_split_shards(
    src: str | Path,
    out: str | Path,
    split: str,
    shard_size: ShardSize,
    resume: bool = False,
    shuffle_seed: int | None = None,
    workers: int = 1,
    progress: bool = True,
    max_bad: int = 0,
    check_images: bool = True,
) -> dict:
    """Shard one split of ``src`` into ``out``; return (and write) its manifest.

    ``max_bad`` images that do not decode are skipped (logged with their source path, listed in
    the manifest); one more stops the run. ``check_images=False`` writes images undecoded.
    """
    if max_bad < 0:
        raise ValueError(f"max_bad must be >= 0, got {max_bad}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    classes, samples = list_image_folder(split_source_dir(src, split))
    if not samples:
        raise DataNotFoundError(f"no images found for split {split!r} under {src}")
    class_map = {str(i): name for i, name in enumerate(classes)}
    classes_path = out / CLASSES_FILE
    if classes_path.exists():
        with open(classes_path) as f:
            if json.load(f) != class_map:
                raise ValueError(f"{classes_path} lists other classes than {src} ({split})")
    else:
        write_json(classes_path, class_map)

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
        kept = _finished_shard(tar, shard, check_images) if resume and os.path.isfile(tar) else None
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
    tasks = [(tars[i], shards[i], max_bad, check_images) for i in todo]
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

    verify_split(out, shards, records, skipped)
    manifest = manifest_for(
        split, shards, records, classes, fingerprint, shard_size, shuffle_seed, skipped
    )
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


def _count_bad(skipped: list[dict], new: Sequence[dict], max_bad: int) -> None:
    """Add one shard's skipped images to the run's, logging each; raise past ``max_bad``."""
    for entry in new:
        skipped.append(entry)
        if len(skipped) > max_bad:
            raise too_many_bad_images(entry, len(skipped), max_bad)
        LOGGER.warning(
            "skipped bad image %d/%d: %s (%s): %s",
            len(skipped),
            max_bad,
            entry["path"],
            entry["shard"],
            entry["error"],
        )


def _check_image(tar: str, components: list[tuple[str, int, int]]) -> tuple[str, str] | None:
    """``(key, error)`` if the sample's image fails a PIL decode, else None."""
    image = [(off, n) for ext, off, n in components if ext in IMAGE_EXTS.split(";")]
    with open(tar, "rb") as f:
        offset, size = image[0] if image else (components[0][1], 0)
        f.seek(offset - TAR_BLOCK)
        name = tarfile.TarInfo.frombuf(f.read(TAR_BLOCK), "utf-8", "surrogateescape").name
        key = name[: name.find(".", name.rfind("/") + 1)]
        if not image:
            return key, "no image component"
        data = f.read(size)
    error = decode_error(data)
    if error:
        return key, error
    if len(data) < size:
        return key, "image data truncated"
    return None


def find_bad_images(
    split: ShardedSplit, limit: int = 10, threads: int = 8
) -> list[tuple[str, str, str]]:
    """Scan a split's images with PIL; return up to ``limit`` ``(tar, key, error)`` failures.

    Used after DALI reports a decode failure without saying which sample failed.
    """
    from concurrent.futures import ThreadPoolExecutor

    bad: list[tuple[str, str, str]] = []
    with ThreadPoolExecutor(threads) as pool:
        for tar, idx in zip(split.tars, split.indexes):
            size = os.path.getsize(tar)
            samples = [c for c in read_dali_index(idx) if all(o + n <= size for _, o, n in c)]
            for result in pool.map(lambda c, t=tar: _check_image(t, c), samples):
                if result is not None:
                    bad.append((tar, *result))
            if len(bad) >= limit:
                break
    return bad[:limit]
