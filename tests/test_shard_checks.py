"""Shards are checked when written, resumed, on demand and when a dataset opens them.

``tools/make_shards.py`` decodes every image before writing it, ``--resume`` rewrites a truncated
finished shard, ``tools/check_shards.py`` reports a set shard by shard, and ``ImageNetShards``
compares shard sizes with the manifest when constructed. The tools run as subprocesses on a tiny
ImageFolder tree of real JPEGs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hpff_dist.data.imagenet import BadSampleError, ImageNetShards
from hpff_dist.data.imagenet.shard_checks import check_split
from hpff_dist.data.imagenet.shards import make_split_shards, parse_shard_size, read_dali_index

ROOT = Path(__file__).resolve().parents[1]
GARBAGE, EMPTY = "c0/img1.JPEG", "c1/img2.JPEG"


def _write_tree(root: Path) -> Path:
    """Two classes of four small JPEGs under ``root/val``."""
    rng = np.random.default_rng(0)
    for c in range(2):
        folder = root / "val" / f"c{c}"
        folder.mkdir(parents=True)
        for i in range(4):
            pixels = (rng.random((24, 32, 3)) * 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"img{i}.JPEG", quality=85)
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return _write_tree(tmp_path_factory.mktemp("tree"))


@pytest.fixture(scope="module")
def bad_tree(tmp_path_factory) -> Path:
    """The tree with one undecodable (garbage after a JPEG marker) and one empty JPEG."""
    root = _write_tree(tmp_path_factory.mktemp("bad_tree"))
    rng = np.random.default_rng(1)
    (root / "val" / GARBAGE).write_bytes(b"\xff\xd8\xff\xe0" + rng.bytes(500))
    (root / "val" / EMPTY).write_bytes(b"")
    return root


@pytest.fixture
def truncated(tree, tmp_path) -> tuple[Path, bytes]:
    """A finished val set whose middle shard is cut inside its last image, and that shard's
    original bytes."""
    out = tmp_path / "shards"
    make_split_shards(tree, out, "val", parse_shard_size("3"), progress=False)
    shard = out / "val-000001.tar"
    original = shard.read_bytes()
    jpg = next(
        (o, n) for ext, o, n in read_dali_index(str(out / "val-000001.idx"))[-1] if ext == "jpg"
    )
    with open(shard, "r+b") as f:
        f.truncate(jpg[0] + jpg[1] // 2)
    return out, original


def _tool(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "tools" / name), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_make_shards_stops_at_a_bad_image_naming_its_source(bad_tree, tmp_path):
    out = tmp_path / "out"
    result = _tool("make_shards.py", str(bad_tree), str(out), "--split", "val", "--no-progress")
    assert result.returncode == 1
    message = result.stderr.strip().splitlines()[-1]
    assert str(bad_tree / "val" / GARBAGE) in message and "--max-bad" in message
    assert not list(out.glob("val-*.tar*"))  # nothing half-written left behind


def test_make_shards_skips_bad_images_within_budget_and_lists_them(bad_tree, tmp_path):
    out = tmp_path / "out"
    args = [str(bad_tree), str(out), "--split", "val", "--shard-size", "3", "--no-progress"]
    result = _tool("make_shards.py", *args, "--max-bad", "2", "--workers", "2")
    assert result.returncode == 0, result.stderr
    for bad in (GARBAGE, EMPTY):
        assert str(bad_tree / "val" / bad) in result.stderr  # logged with its source path
    manifest = json.loads((out / "manifest-val.json").read_text())
    assert manifest["num_samples"] == 6
    assert {entry["path"] for entry in manifest["skipped"]} == {
        str(bad_tree / "val" / GARBAGE),
        str(bad_tree / "val" / EMPTY),
    }
    assert manifest["skipped"][0]["error"] and manifest["skipped"][1]["error"] == "empty file"
    checks = check_split(out, "val", decode=True)
    assert all(c.ok for c in checks) and sum(len(c.keys) for c in checks) == 6


def test_resume_rewrites_a_truncated_finished_shard(tree, truncated):
    out, original = truncated
    args = [str(tree), str(out), "--split", "val", "--shard-size", "3", "--no-progress"]
    result = _tool("make_shards.py", *args, "--resume")
    assert result.returncode == 0, result.stderr
    assert "rewriting" in result.stderr and "val-000001.tar" in result.stderr
    assert (out / "val-000001.tar").read_bytes() == original


def test_check_shards_reports_counts_per_shard_and_names_the_bad_one(truncated):
    out, _ = truncated
    result = _tool("check_shards.py", str(out))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0].startswith("val-000000.tar  3/3 samples  ok")
    assert lines[1].startswith("val-000001.tar  2/3 samples  truncated")
    assert lines[2].startswith("val-000002.tar  2/2 samples  ok")
    assert json.loads(lines[3])["bad_shards"] == ["val-000001.tar"]
    assert "val-000001.tar" in result.stderr and "--resume" in result.stderr


def test_check_shards_passes_a_good_set(tree, tmp_path):
    out = tmp_path / "shards"
    make_split_shards(tree, out, "val", parse_shard_size("3"), progress=False)
    assert all(c.ok for c in check_split(out, "val", decode=True))


def test_truncated_validation_shard_stops_the_dataset_at_construction(truncated):
    out, _ = truncated
    with pytest.raises(BadSampleError) as error:
        ImageNetShards(str(out), "val", image_size=16)
    message = str(error.value)
    assert "val-000001.tar" in message and "c1/img1" in message and "--resume" in message


def test_truncated_shard_within_budget_is_reported_at_construction(truncated, caplog):
    out, _ = truncated
    caplog.set_level("WARNING", "hpff_dist.data.imagenet")
    ImageNetShards(str(out), "val", image_size=16, max_bad_samples=1)
    assert "val-000001.tar" in caplog.text and "1 sample(s) lost" in caplog.text


def test_resume_keeps_shards_with_images_skipped_as_bad(bad_tree, tmp_path):
    out = tmp_path / "out"
    kw = dict(progress=False, max_bad=2)
    first = make_split_shards(bad_tree, out, "val", parse_shard_size("3"), **kw)
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("val-*.tar")}
    again = make_split_shards(bad_tree, out, "val", parse_shard_size("3"), resume=True, **kw)
    assert again == first
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("val-*.tar")} == kept
    shutil.rmtree(out)
