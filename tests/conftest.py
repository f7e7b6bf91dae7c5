"""Shared fixtures: tiny datasets written in the real on-disk formats (never downloaded)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread():
    """In-process tests run single-threaded: their tensors are tiny, and on a 2-core machine
    intra-op threads only fight each other (and the subprocesses other tests start)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def write_cifar10(root: Path, per_batch: int = 20, seed: int = 0) -> Path:
    """CIFAR-10 python format: pickled dicts with 'data' (N, 3072) and 'labels'."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        batch = {
            "data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            "labels": [int(v) for v in rng.integers(0, 10, per_batch)],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)
    return root


def write_svhn(root: Path, n: int = 30, seed: int = 0) -> Path:
    """SVHN format 2: .mat with X (32, 32, 3, N) and y (N, 1) in 1..10 (10 means digit 0)."""
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        savemat(
            root / f"{split}_32x32.mat",
            {
                "X": rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8),
                "y": rng.integers(1, 11, (n, 1)).astype(np.uint8),
            },
        )
    return root


def write_stl10(root: Path, n: int = 12, seed: int = 0) -> Path:
    """STL-10 binary: uint8 images (N, 3, 96, 96) column-major, labels 1..10 as uint8."""
    rng = np.random.default_rng(seed)
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    for split in ("train", "test"):
        rng.integers(0, 256, (n, 3, 96, 96), dtype=np.uint8).tofile(folder / f"{split}_X.bin")
        rng.integers(1, 11, n).astype(np.uint8).tofile(folder / f"{split}_y.bin")
    return root


@pytest.fixture
def cifar10_root(tmp_path: Path) -> Path:
    return write_cifar10(tmp_path / "cifar10")


@pytest.fixture
def svhn_root(tmp_path: Path) -> Path:
    return write_svhn(tmp_path / "svhn")


@pytest.fixture
def stl10_root(tmp_path: Path) -> Path:
    return write_stl10(tmp_path / "stl10")


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A running single-node SLURM cluster of our own (tests/slurm_cluster.py), stopped at the
    end of the session. Daemons that cannot start fail the test with their logs."""
    from slurm_cluster import ClusterError, start_cluster

    try:
        with start_cluster(tmp_path_factory.mktemp("slurm")) as cluster:
            yield cluster
    except ClusterError as error:
        pytest.fail(str(error), pytrace=False)
