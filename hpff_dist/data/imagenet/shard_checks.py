"""Checks of finished shards: the whole tar structure, sample counts, the DALI index, the images.

A truncated or damaged shard should be found before anything trains on it, and named:
``make_shards --resume`` rewrites a finished shard that fails :func:`check_shard`,
``tools/check_shards.py`` reports every shard of a set, and ``ImageNetShards`` compares file sizes
with the manifest when it is constructed (O(1) per shard), so a truncated validation shard stops a
run at its start instead of after the first training epoch.
"""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hpff_dist.data.imagenet.errors import LOGGER, BadSampleError
from hpff_dist.data.imagenet.shards import (
    IMAGE_EXTS,
    MANIFEST_PATTERN,
    TAR_BLOCK,
    ShardedSplit,
    decode_error,
    index_path_for,
    key_of,
    read_dali_index,
    sample_components,
)

_IMAGE_EXTS = frozenset(IMAGE_EXTS.split(";"))
CLASSIFICATION_MEMBERS = ("cls", "label")  # ImageFolderLayout.members
REMAKE_HINT = (
    "Re-make it: `python tools/make_shards.py SRC OUT --split {split} --resume` (with the "
    "arguments the set was made with) rewrites truncated or damaged shards; "
    "`python tools/check_shards.py OUT` checks the whole set."
)


@dataclass
class ShardCheck:
    """What a check found in one shard; ``ok`` when nothing is wrong."""

    path: str
    keys: list[str] = field(default_factory=list)
    problem: str | None = None  # the tar itself: truncated, damaged, wrong sample count
    index_problem: str | None = None  # the DALI index next to it
    bad_images: list[tuple[str, str]] = field(default_factory=list)  # (key, decode error)

    @property
    def ok(self) -> bool:
        return not (self.problem or self.index_problem or self.bad_images)


def read_members(tar_path: str) -> tuple[list[tarfile.TarInfo], str | None]:
    """The members of a tar, and what is wrong with its structure (None when whole).

    Python's tarfile stops quietly at a cut header, so every member's data is checked against
    the file size and the end-of-archive marker (two zero blocks) must follow the last member.
    """
    size = os.path.getsize(tar_path)
    if size == 0:
        return [], "empty file"
    members: list[tarfile.TarInfo] = []
    try:
        with tarfile.open(tar_path, "r:") as tar:
            for info in tar:
                end = info.offset_data + info.size
                if end > size:
                    return members, f"truncated: {info.name} ends at byte {end}, file has {size}"
                members.append(info)
            end = tar.offset
    except tarfile.TarError as error:
        return members, f"not a readable tar ({type(error).__name__}: {error})"
    with open(tar_path, "rb") as f:
        f.seek(end)
        marker = f.read(2 * TAR_BLOCK)
    if marker != bytes(2 * TAR_BLOCK):
        return members, f"truncated or damaged after byte {end} (no end-of-archive marker)"
    return members, None


def group_samples(
    members: list[tarfile.TarInfo], required: Sequence[str] = CLASSIFICATION_MEMBERS
) -> tuple[list[str], str | None]:
    """Keys of the complete samples in order (an image and every ``required`` member), and
    the first sample that lacks one."""
    parts: dict[str, set[str]] = {}
    for info in members:
        key = key_of(info.name)
        parts.setdefault(key, set()).add(info.name[len(key) + 1 :])
    need = set(required)
    complete = [k for k, exts in parts.items() if need <= exts and exts & _IMAGE_EXTS]
    broken = [k for k in parts if k not in complete]
    problem = f"sample {broken[0]} has only {sorted(parts[broken[0]])}" if broken else None
    return complete, problem


def index_problem(tar_path: str, nsamples: int) -> str | None:
    """What is wrong with the DALI index of a whole tar, or None."""
    idx = index_path_for(tar_path)
    if not os.path.isfile(idx):
        return f"index {os.path.basename(idx)} missing"
    try:
        samples = read_dali_index(idx)
    except (ValueError, IndexError) as error:
        return f"index {os.path.basename(idx)} unreadable: {error}"
    size = os.path.getsize(tar_path)
    if len(samples) != nsamples or any(o + n > size for c in samples for _, o, n in c):
        return f"index {os.path.basename(idx)} does not match the tar ({len(samples)} samples)"
    return None


def bad_images(tar_path: str, members: list[tarfile.TarInfo]) -> list[tuple[str, str]]:
    """``(key, error)`` of every image member PIL cannot decode."""
    bad = []
    with open(tar_path, "rb") as f:
        for info in members:
            if info.name[len(key_of(info.name)) + 1 :] not in _IMAGE_EXTS:
                continue
            f.seek(info.offset_data)
            error = decode_error(f.read(info.size))
            if error:
                bad.append((key_of(info.name), error))
    return bad


def check_shard(
    tar_path: str,
    expected: int | None = None,
    decode: bool = False,
    size: int | None = None,
    members: Sequence[str] = CLASSIFICATION_MEMBERS,
    sha256: str | None = None,
) -> ShardCheck:
    """Structure, sample count and size (against the manifest's ``expected`` and ``size``), index
    and, with ``decode``, the images. ``members``: what every sample has besides its image;
    ``sha256``: the manifest's checksum, compared when given (reads the whole shard)."""
    if not os.path.isfile(tar_path):
        return ShardCheck(tar_path, problem="missing")
    tar_members, problem = read_members(tar_path)
    keys, sample_problem = group_samples(tar_members, members)
    check = ShardCheck(tar_path, keys, problem or sample_problem)
    if check.problem is None and expected is not None and len(keys) != expected:
        check.problem = f"{len(keys)} samples, the manifest says {expected}"
    found_size = os.path.getsize(tar_path)
    if check.problem is None and size is not None and found_size != size:
        check.problem = f"{found_size} bytes, the manifest says {size}"
    if check.problem is None and sha256 is not None:
        from hpff_dist.data.shard_writer import file_sha256

        if file_sha256(tar_path) != sha256:
            check.problem = "its SHA-256 differs from the manifest's (the bytes changed)"
    if check.problem is None:
        check.index_problem = index_problem(tar_path, len(keys))
        if decode:
            check.bad_images = bad_images(tar_path, tar_members)
    return check


def check_split(
    root: str | Path, split: str, decode: bool = False, checksums: bool = False
) -> list[ShardCheck]:
    """Check every shard the manifest of ``split`` lists (``checksums``: against its SHA-256s)."""
    with open(Path(root) / MANIFEST_PATTERN.format(split=split)) as f:
        manifest = json.load(f)
    members = manifest.get("members", CLASSIFICATION_MEMBERS)  # sets made before it was recorded
    return [
        check_shard(
            str(Path(root) / r["url"]),
            int(r["nsamples"]),
            decode,
            r.get("filesize"),
            members,
            r.get("sha256") if checksums else None,
        )
        for r in manifest["shards"]
    ]


def lost_samples(tar_path: str, idx_path: str) -> list[str]:
    """Keys of the samples whose data runs past the end of a truncated tar, from its index
    (whose v1.2 lines name each member, so a key is known even when its header was cut)."""
    size = os.path.getsize(tar_path)
    return [
        sample["key"]
        for sample in sample_components(idx_path)
        if any(o + n > size for o, n in sample["members"].values())
    ]


def _size_problem(split: ShardedSplit, i: int) -> tuple[str, list[str] | None] | None:
    """``(description, lost keys or None if unknown)`` when shard ``i`` is not its manifest size."""
    tar, expected = split.tars[i], split.filesizes[i]
    size = os.path.getsize(tar)
    if size == expected:
        return None
    what = f"{tar} has {size} bytes, its manifest says {expected}"
    if size > expected or not os.path.isfile(split.indexes[i]):
        return what, None
    try:
        return f"{what} (truncated)", lost_samples(tar, split.indexes[i])
    except (ValueError, IndexError, tarfile.TarError):
        return f"{what} (truncated)", None


def check_sizes_at_start(split: ShardedSplit, max_bad_samples: int) -> None:
    """Compare every shard's size with its manifest before the first epoch.

    Samples lost to truncation would each be a bad sample when read: more than
    ``max_bad_samples`` of them (or an unknown number) stop here, with the shard named; fewer
    are logged and then skipped when read.
    """
    if split.filesizes is None:
        return
    lost_total, warnings = 0, []
    for i in range(len(split.tars)):
        found = _size_problem(split, i)
        if found is None:
            continue
        what, lost = found
        hint = REMAKE_HINT.format(split=split.split)
        if lost is None:
            raise BadSampleError(f"{what}: its samples cannot be trusted. {hint}")
        if not lost:
            LOGGER.warning("%s, but every sample is inside it", what)
            continue
        lost_total += len(lost)
        if lost_total > max_bad_samples:
            raise BadSampleError(
                f"{what}: {len(lost)} sample(s) lost ({', '.join(lost[:3])}), more bad samples "
                f"than max_bad_samples={max_bad_samples}. {hint} Or raise max_bad_samples."
            )
        warnings.append(f"{what}: {len(lost)} sample(s) lost ({', '.join(lost[:3])})")
    for warning in warnings:
        LOGGER.warning("%s; they will be skipped as bad samples", warning)
