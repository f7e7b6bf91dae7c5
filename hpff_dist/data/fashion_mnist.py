"""Fashion-MNIST read straight from Debian's ``dataset-fashion-mnist`` package.

The package installs the original gzipped IDX files under ``/usr/share/datasets/fashion-mnist``;
we decode them in place (no copy, no download). IDX: big-endian magic (0x0803 images /
0x0801 labels), then the dimension sizes as big-endian int32, then raw uint8 data.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from hpff_dist.data.errors import CorruptDataError
from hpff_dist.data.sample_seeds import SeededItems
from hpff_dist.data.transforms import build_pipeline
from hpff_dist.registry import DATASETS

DEBIAN_ROOT = "/usr/share/datasets/fashion-mnist"
CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


GOOD_COPY_HINT = (
    "Get a good copy: reinstall Debian's package (`apt-get install --reinstall "
    "dataset-fashion-mnist`), or download the file from "
    "https://github.com/zalandoresearch/fashion-mnist (data/fashion/) on a machine with internet "
    "access and put it in the data folder."
)


def _corrupt(path: str | Path, problem: str) -> CorruptDataError:
    return CorruptDataError(f"{path} is corrupted or incomplete: {problem}. {GOOD_COPY_HINT}")


def _read_bytes(path: str | Path) -> bytes:
    """The file's bytes, un-gzipped for ``*.gz``; a damaged gzip stream names the file."""
    if not str(path).endswith(".gz"):
        return Path(path).read_bytes()
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise _corrupt(path, f"bad gzip data ({type(error).__name__}: {error})") from error


def read_idx(path: str | Path) -> np.ndarray:
    """Decode one (optionally gzipped) IDX file of uint8 data into an array."""
    data = _read_bytes(path)
    if len(data) < 4:
        raise _corrupt(path, f"{len(data)} bytes, too short for an IDX header")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08 or len(data) < 4 + 4 * ndim:
        raise _corrupt(path, f"not a uint8 IDX file (magic {data[:4].hex()})")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise _corrupt(path, f"header says {shape} but holds {body.size} values")
    return body.reshape(shape)


@DATASETS.register_module()
class FashionMNIST(SeededItems, Dataset):
    """Fashion-MNIST (60000 train / 10000 test, 28x28 grey, 10 classes).

    Items are ``(image, label)`` with ``image`` a (1, 28, 28) uint8 tensor passed through
    ``pipeline``. ``subset`` keeps the first N images (class-balanced in practice) for quick runs.
    """

    classes = CLASSES

    def __init__(
        self,
        root: str = DEBIAN_ROOT,
        split: str = "train",
        pipeline: list | None = None,
        subset: int | None = None,
    ) -> None:
        if split not in _FILES:
            raise ValueError(f"FashionMNIST split must be one of {sorted(_FILES)}, got {split!r}")
        root_path = Path(root)
        paths = [root_path / name for name in _FILES[split]]
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            raise FileNotFoundError(
                f"Fashion-MNIST files not found: {missing}. Install Debian's package "
                "(`apt-get install dataset-fashion-mnist`, done by `make`) or point "
                "`root` at a folder holding the four *-ubyte.gz files."
            )
        images, labels = read_idx(paths[0]), read_idx(paths[1])
        if len(images) != len(labels):
            raise _corrupt(
                paths[1], f"{len(labels)} labels for the {len(images)} images of {paths[0]}"
            )
        if subset is not None:
            images, labels = images[:subset], labels[:subset]
        self.images = torch.from_numpy(images.copy()).unsqueeze(1)
        self.targets = torch.from_numpy(labels.astype(np.int64))
        self.pipeline = build_pipeline(pipeline)

    @property
    def metainfo(self) -> dict:
        """Class names, read by mmengine's evaluator and visualizer."""
        return {"classes": self.classes}

    def __len__(self) -> int:
        return len(self.targets)

    def load_item(self, index: int) -> tuple[torch.Tensor, int]:
        return self.pipeline(self.images[index]), int(self.targets[index])
