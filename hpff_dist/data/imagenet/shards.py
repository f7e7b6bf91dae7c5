"""ImageNet-layout folders (or any ImageFolder) as webdataset shards, and finding them again.

Written by the split driver of :mod:`hpff_dist.data.shard_writer` (plan, atomic writes,
``--resume``, verification, manifest) with :class:`ImageFolderLayout`; each sample is
``<key>.jpg`` + ``<key>.cls`` (ASCII class index, for webdataset and wids) + ``<key>.label``
(little-endian int32, because DALI's ``fn.readers.webdataset`` cannot parse ASCII), and
``classes.json`` maps class index -> wnid / folder name. Every image is decoded before it is
written (the bytes are stored unchanged): one that does not decode is reported with its source
path, and skipped within a budget (``max_bad``) or stops the run.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from hpff_dist.data.imagenet.errors import MAKE_SHARDS_HINT, DataNotFoundError
from hpff_dist.data.shard_writer import (  # noqa: F401  (re-exported: the shard set's API)
    CLASSES_FILE,
    MANIFEST_PATTERN,
    SHARD_PATTERN,
    TAR_BLOCK,
    WIDS_PATTERN,
    ShardSize,
    index_path_for,
    parse_shard_size,
    plan_fingerprint,
    plan_shards,
    tar_bytes,
    write_dali_index,
    write_json,
    write_split_shards,
)

IMAGE_EXTS = "jpg;jpeg;png;webp;bmp"  # what the readers accept as the image of a sample


@dataclass(frozen=True)
class SourceSample:
    """One image of the source tree, and the key it gets inside a shard."""

    path: str
    label: int
    key: str
    ext: str
    size: int

    @property
    def tar_bytes(self) -> int:
        return tar_bytes([self.size, len(b"%d" % self.label), 4])

    @property
    def plan_line(self) -> str:
        return f"{self.key}\t{self.ext}\t{self.label}\t{self.size}"


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


class ImageFolderLayout:
    """An ImageFolder sample in a shard: the image as stored, ``.cls`` and ``.label``."""

    members = ("cls", "label")

    def read(self, sample: SourceSample, check: bool) -> tuple[dict[str, bytes], str | None]:
        with open(sample.path, "rb") as f:
            image = f.read()
        error = decode_error(image) if check else None
        if error:
            return {}, error
        return {
            sample.ext: image,
            "cls": b"%d" % sample.label,
            "label": label_bytes(sample.label),
        }, None

    def read_back(self, tar_path: str) -> list[tuple[str, int]]:
        return list(read_labels(tar_path))

    def expected(self, sample: SourceSample) -> tuple[str, int]:
        return sample.key, sample.label

    def summary(self, written: Sequence[SourceSample], classes: Sequence[str]) -> dict:
        per_class = Counter(classes[s.label] for s in written)
        return {"per_class": dict(sorted(per_class.items()))}


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
    """Shard one split of an ImageFolder ``src`` into ``out``; return (and write) its manifest.

    ``max_bad`` images that do not decode are skipped (logged with their source path, listed in
    the manifest); one more stops the run. ``check_images=False`` writes images undecoded.
    """
    classes, samples = list_image_folder(split_source_dir(src, split))
    if not samples:
        raise DataNotFoundError(f"no images found for split {split!r} under {src}")
    return write_split_shards(
        samples,
        classes,
        out,
        split,
        shard_size,
        ImageFolderLayout(),
        source=str(src),
        resume=resume,
        shuffle_seed=shuffle_seed,
        workers=workers,
        progress=progress,
        max_bad=max_bad,
        check=check_images,
    )


def key_of(member_name: str) -> str:
    """Sample key of a tar member: its name up to the first dot of the file name."""
    return member_name[: member_name.find(".", member_name.rfind("/") + 1)]


def _index_entries(idx_path: str) -> list[list[tuple[str, int, int, str]]]:
    """Parse a ``wds2idx`` v1.2 index: per sample, ``(ext, data_offset, size, name)`` per
    component (v1.2 lines are "ext offset size name" quadruples)."""
    with open(idx_path) as f:
        header = f.readline().split()
        if len(header) != 2 or header[0] != "v1.2":
            raise ValueError(f"{idx_path}: not a DALI v1.2 webdataset index (header {header})")
        samples = []
        for line in f:
            fields = line.split()
            samples.append(
                [
                    (fields[i], int(fields[i + 1]), int(fields[i + 2]), fields[i + 3])
                    for i in range(0, len(fields), 4)
                ]
            )
    if len(samples) != int(header[1]):
        raise ValueError(f"{idx_path}: header says {header[1]} samples, found {len(samples)}")
    return samples


def read_dali_index(idx_path: str) -> list[list[tuple[str, int, int]]]:
    """Per sample of a ``wds2idx`` v1.2 index, ``(ext, data_offset, size)`` per component."""
    return [[(ext, off, size) for ext, off, size, _ in c] for c in _index_entries(idx_path)]


def sample_components(idx_path: str) -> list[dict[str, Any]]:
    """Per sample of a DALI v1.2 index: its key and ``{ext: (offset, size)}``, without
    touching the tar (the index lists each member's file name)."""
    return [
        {
            "key": key_of(components[0][3]),
            "members": {ext: (off, size) for ext, off, size, _ in components},
        }
        for components in _index_entries(idx_path)
    ]


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


def load_manifest(root: str | Path, split: str, hint: str = MAKE_SHARDS_HINT) -> dict:
    """The manifest of ``split`` under ``root``; a clear error when the shards are not there."""
    root = Path(root)
    path = root / MANIFEST_PATTERN.format(split=split)
    if not root.is_dir():
        raise DataNotFoundError(f"shard directory {root} does not exist. {hint}")
    if not path.is_file():
        found = sorted(p.name for p in root.glob(f"{split}-*.tar"))
        state = f"found {len(found)} shard(s) but no manifest" if found else "found no shards"
        raise DataNotFoundError(
            f"{root}: {state} for split {split!r} (expected {path.name} next to "
            f"{SHARD_PATTERN.format(split=split, index=0)}, ...). {hint}"
        )
    with open(path) as f:
        manifest = json.load(f)
    for record in manifest["shards"]:
        tar = root / record["url"]
        if not tar.is_file():
            raise DataNotFoundError(f"{tar} is listed in {path} but missing. {hint}")
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


def find_split(root: str | Path, split: str, hint: str = MAKE_SHARDS_HINT) -> ShardedSplit:
    """Locate the shards of ``split`` under ``root`` through its manifest."""
    root = Path(root)
    manifest = load_manifest(root, split, hint)
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
    split: ShardedSplit,
    limit: int = 10,
    threads: int = 8,
    check: Callable[[str, list[tuple[str, int, int]]], tuple[str, str] | None] | None = None,
) -> list[tuple[str, str, str]]:
    """Scan a split's samples (those whole in their tar); return up to ``limit``
    ``(tar, key, error)`` failures of ``check(tar, components)`` (default: the image fails a
    PIL decode).

    Used after DALI reports a decode failure without saying which sample failed.
    """
    from concurrent.futures import ThreadPoolExecutor

    check = check or _check_image
    bad: list[tuple[str, str, str]] = []
    with ThreadPoolExecutor(threads) as pool:
        for tar, idx in zip(split.tars, split.indexes):
            size = os.path.getsize(tar)
            samples = [c for c in read_dali_index(idx) if all(o + n <= size for _, o, n in c)]
            for result in pool.map(lambda c, t=tar: check(t, c), samples):
                if result is not None:
                    bad.append((tar, *result))
            if len(bad) >= limit:
                break
    return bad[:limit]
