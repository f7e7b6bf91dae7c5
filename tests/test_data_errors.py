"""Corrupt data files stop a run with an error that names the file and how to get a good copy.

Each case writes a tiny dataset in its real on-disk format (tests/conftest.py), damages one file
(garbage bytes or truncation) and builds the dataset as a tool's config does. One case per dataset
runs in a fresh interpreter (exit status and the last line of the traceback, what a user sees;
those processes run at once to keep the module fast), the others in this process.
"""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, write_cifar10, write_stl10, write_svhn

from hpff_dist.data.fashion_mnist import DEBIAN_ROOT

BUILD = (
    "import sys, json; import hpff_dist.data; from hpff_dist.registry import DATASETS; "
    "DATASETS.build(json.loads(sys.argv[1]))"
)


def _truncate(path: Path, keep: int | None = None) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 if keep is None else keep])


def _fmnist(root: Path) -> Path:
    root.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(f"{DEBIAN_ROOT}/{name}", root / name)
    return root


def _cifar_garbage(tmp: Path) -> tuple[dict, Path]:
    root = write_cifar10(tmp / "cifar_garbage")
    bad = root / "cifar-10-batches-py" / "data_batch_1"
    bad.write_bytes(np.random.default_rng(0).bytes(5000))
    return dict(type="CIFAR10", root=str(root)), bad


def _cifar_truncated(tmp: Path) -> tuple[dict, Path]:
    root = write_cifar10(tmp / "cifar_truncated")
    bad = root / "cifar-10-batches-py" / "data_batch_3"
    _truncate(bad)
    return dict(type="CIFAR10", root=str(root), verify_checksums=False), bad


def _svhn_truncated(tmp: Path) -> tuple[dict, Path]:
    root = write_svhn(tmp / "svhn_truncated")
    bad = root / "train_32x32.mat"
    _truncate(bad)
    return dict(type="SVHN", root=str(root), verify_checksums=False), bad


def _svhn_garbage(tmp: Path) -> tuple[dict, Path]:
    root = write_svhn(tmp / "svhn_garbage")
    bad = root / "test_32x32.mat"
    bad.write_bytes(b"\0garbage" * 500)
    return dict(type="SVHN", root=str(root), split="test", verify_checksums=False), bad


def _stl10_truncated(tmp: Path) -> tuple[dict, Path]:
    root = write_stl10(tmp / "stl10_truncated")
    bad = root / "stl10_binary" / "train_X.bin"
    _truncate(bad, keep=bad.stat().st_size - 100)
    return dict(type="STL10", root=str(root), verify_checksums=False), bad


def _fmnist_truncated(tmp: Path) -> tuple[dict, Path]:
    root = _fmnist(tmp / "fmnist_truncated")
    bad = root / "t10k-images-idx3-ubyte.gz"
    _truncate(bad)
    return dict(type="FashionMNIST", root=str(root), split="test"), bad


def _fmnist_garbage(tmp: Path) -> tuple[dict, Path]:
    root = _fmnist(tmp / "fmnist_garbage")
    bad = root / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(b"not gzip at all" * 10)
    return dict(type="FashionMNIST", root=str(root), split="test"), bad


def _fmnist_short_labels(tmp: Path) -> tuple[dict, Path]:
    """A well-formed gzip whose IDX holds fewer labels than its header says."""
    root = _fmnist(tmp / "fmnist_short")
    bad = root / "t10k-labels-idx1-ubyte.gz"
    with gzip.open(bad) as f:
        data = f.read()
    bad.write_bytes(gzip.compress(data[:-10]))
    return dict(type="FashionMNIST", root=str(root), split="test"), bad


#: case -> (writer, what the fix must mention)
SUBPROCESS_CASES = {
    "cifar_garbage": (_cifar_garbage, "cifar-10-python.tar.gz"),
    "svhn_truncated": (_svhn_truncated, "train_32x32.mat (format 2"),
    "stl10_truncated": (_stl10_truncated, "stl10_binary.tar.gz"),
    "fmnist_truncated": (_fmnist_truncated, "apt-get install --reinstall dataset-fashion-mnist"),
}
IN_PROCESS_CASES = {
    "cifar_truncated": (_cifar_truncated, "cifar-10-python.tar.gz"),
    "svhn_garbage": (_svhn_garbage, "test_32x32.mat (format 2"),
    "fmnist_garbage": (_fmnist_garbage, "apt-get install --reinstall dataset-fashion-mnist"),
    "fmnist_short_labels": (_fmnist_short_labels, "zalandoresearch/fashion-mnist"),
}


def _assert_names_file_and_fix(message: str, bad: Path, fix: str) -> None:
    assert str(bad) in message and "corrupted or incomplete" in message
    assert fix in message and "internet access" in message
    assert "download=True" not in message


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    """Each subprocess case built in its own interpreter, all started together."""
    tmp = tmp_path_factory.mktemp("corrupt")
    started = {}
    for name, (write, _) in SUBPROCESS_CASES.items():
        spec, bad = write(tmp)
        process = subprocess.Popen(
            [sys.executable, "-c", BUILD, json.dumps(spec)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started[name] = (process, bad)
    results = {}
    for name, (process, bad) in started.items():
        out, err = process.communicate(timeout=120)
        results[name] = (
            subprocess.CompletedProcess(process.args, process.returncode, out, err),
            bad,
        )
    return results


@pytest.mark.parametrize("case", sorted(SUBPROCESS_CASES))
def test_corrupt_file_stops_the_process_naming_file_and_fix(case, runs):
    result, bad = runs[case]
    assert result.returncode != 0
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("hpff_dist.data.errors.CorruptDataError: "), message
    _assert_names_file_and_fix(message, bad, SUBPROCESS_CASES[case][1])


@pytest.mark.parametrize("case", sorted(IN_PROCESS_CASES))
def test_corrupt_file_error_names_file_and_fix(case, tmp_path):
    from hpff_dist.data.errors import CorruptDataError
    from hpff_dist.registry import DATASETS

    write, fix = IN_PROCESS_CASES[case]
    spec, bad = write(tmp_path)
    with pytest.raises(CorruptDataError) as error:
        DATASETS.build(spec)
    _assert_names_file_and_fix(str(error.value), bad, fix)


def test_checksum_failure_names_the_file_and_both_fixes(cifar10_root):
    """Synthetic CIFAR is readable but not the official release: name the first file that
    differs, say where the official copy is, and how to accept a re-packed one."""
    from hpff_dist.data.errors import CorruptDataError
    from hpff_dist.registry import DATASETS

    with pytest.raises(CorruptDataError) as error:
        DATASETS.build(dict(type="CIFAR10", root=str(cifar10_root)))
    message = str(error.value)
    assert str(cifar10_root / "cifar-10-batches-py" / "data_batch_1") in message
    assert "md5" in message and "verify_checksums=False" in message
    assert "cifar-10-python.tar.gz" in message and "download=True" not in message
    assert isinstance(error.value, RuntimeError)  # what torchvision raised before
