"""CIFAR-10, SVHN and STL-10 read from a folder the user provides, never downloaded.

torchvision's dataset classes know the on-disk formats; we only check the files are there
first, so a missing folder says what to put where instead of suggesting ``download=True``. When
torchvision fails on a file that is there (garbage, truncated, not the official release), each
file is checked in turn so that the error names the broken one and how to get a good copy.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import datasets
from torchvision.datasets.utils import calculate_md5
from torchvision.transforms.v2 import functional as F

from hpff_dist.data.errors import CorruptDataError
from hpff_dist.data.sample_seeds import SeededItems
from hpff_dist.data.transforms import build_pipeline
from hpff_dist.registry import DATASETS

_NO_CHECKSUM_HINT = (
    "If you re-packed or made these files yourself on purpose, turn the checksum off with "
    "verify_checksums=False on the dataset (e.g. --cfg-options "
    "train_dataloader.dataset.verify_checksums=False val_dataloader.dataset.verify_checksums=False)."
)


class _TorchvisionFolder(SeededItems, Dataset):
    """Wraps a torchvision dataset; items are ``(pipeline(uint8 CHW tensor), label)``."""

    #: files/folders (relative to root) that must exist, per split
    required: dict[str, list[str]] = {}
    #: how to obtain them, for the error message
    where: str = ""
    #: where a good copy comes from, for the error naming a broken file
    source: str = ""

    def __init__(
        self,
        root: str,
        split: str = "train",
        pipeline: list | None = None,
        verify_checksums: bool = True,
    ) -> None:
        if split not in self.required:
            raise ValueError(
                f"{type(self).__name__} split must be one of {sorted(self.required)}, got {split!r}"
            )
        missing = [r for r in self.required[split] if not (Path(root) / r).exists()]
        if missing:
            raise FileNotFoundError(
                f"{type(self).__name__}: {missing} not found under data root {root!r}. "
                f"{self.where} Point the tools at it with --data-root /path."
            )
        self.root, self.split = root, split
        self.verify_checksums = verify_checksums
        self.data = self._load_or_explain(root, split)
        self.pipeline = build_pipeline(pipeline)

    def _load(self, root: str, split: str) -> Dataset:
        raise NotImplementedError

    def _checksummed(self, root: str) -> list[tuple[Path, str]]:
        """``(path, official md5)`` of every file torchvision's checksum check reads."""
        raise NotImplementedError

    def _split_files(self, root: str, split: str) -> list[Path]:
        """The files torchvision reads for ``split``."""
        raise NotImplementedError

    def _format_problem(self, path: Path) -> str | None:
        """What keeps ``path`` from being read in the dataset's format, or None if it reads."""
        raise NotImplementedError

    def _reader(self, cls: type) -> type:
        """torchvision's class, or one that trusts the files (re-packed or synthetic data,
        whose md5 differs from the official release)."""
        if self.verify_checksums:
            return cls
        attrs: dict = {"_check_integrity": lambda _: True}
        if isinstance(getattr(cls, "meta", None), dict):  # CIFAR also checks its meta file
            attrs["meta"] = {**cls.meta, "md5": None}
        return type(f"Unverified{cls.__name__}", (cls,), attrs)

    def _load_or_explain(self, root: str, split: str) -> Dataset:
        """torchvision's dataset; any failure becomes an error naming the broken file."""
        try:
            data = self._load(root, split)
            _check_counts(data)
        except Exception as error:  # noqa: BLE001 - pickle, scipy, numpy and torchvision alike
            raise CorruptDataError(self._explain(root, split, error)) from error
        return data

    def _find_problem(self, root: str, split: str) -> tuple[Path, str, bool] | None:
        """The first broken file: ``(path, problem, whether only the checksum objects)``.

        Formats are checked before checksums, so a garbage file is named as such even when
        every file of a re-packed copy also fails its checksum.
        """
        split_files = self._split_files(root, split)
        if self.verify_checksums:
            files = self._checksummed(root)
        else:
            files = [(path, "") for path in split_files]
        for path, _ in files:
            if not path.is_file() and path in split_files:
                return path, "missing", False
            if not path.is_file():
                return path, "missing (the check reads every file of the release)", True
            problem = self._format_problem(path)
            if problem:
                return path, problem, False
        if self.verify_checksums:
            for path, md5 in files:
                got = calculate_md5(path)
                if got != md5:
                    return path, f"md5 {got}, the official release's is {md5}", True
        return None

    def _explain(self, root: str, split: str, error: Exception) -> str:
        name = type(self).__name__
        fix = (
            "Get a good copy on a machine with internet access (this project never downloads): "
            f"{self.source.format(root=root, split=split)}."
        )
        found = self._find_problem(root, split)
        if found is None:
            return (
                f"{name}: reading the {split!r} split under {root} failed "
                f"({type(error).__name__}: {error}). {self.where} {fix}"
            )
        path, problem, checksum_only = found
        if not checksum_only:
            return f"{name}: {path} is corrupted or incomplete: {problem}. {fix}"
        return (
            f"{name}: {path} fails torchvision's checksum check (corrupted, incomplete or "
            f"re-packed): {problem}. {fix} {_NO_CHECKSUM_HINT}"
        )

    @property
    def metainfo(self) -> dict:
        """Class names, read by mmengine's evaluator and visualizer."""
        return {"classes": tuple(getattr(self.data, "classes", ()))}

    def __len__(self) -> int:
        return len(self.data)

    def load_item(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.data[index]
        return self.pipeline(F.pil_to_tensor(image)), int(label)


def _check_counts(data: Dataset) -> None:
    """torchvision loads a label file shorter than its image file without complaint."""
    labels = getattr(data, "targets", getattr(data, "labels", None))
    if labels is not None and len(labels) != len(data.data):
        raise ValueError(f"{len(data.data)} images but {len(labels)} labels")


def _unpickle(path: Path) -> object:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


@DATASETS.register_module()
class CIFAR10(_TorchvisionFolder):
    required = {
        "train": ["cifar-10-batches-py/data_batch_1"],
        "test": ["cifar-10-batches-py/test_batch"],
    }
    where = (
        "Unpack the python version of CIFAR-10 (cifar-10-python.tar.gz) there, giving "
        "<root>/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}."
    )
    source = (
        "download the python version, cifar-10-python.tar.gz, from "
        "https://www.cs.toronto.edu/~kriz/cifar.html and unpack it into {root}"
    )

    def _load(self, root: str, split: str) -> Dataset:
        return self._reader(datasets.CIFAR10)(root, train=split == "train", download=False)

    def _checksummed(self, root: str) -> list[tuple[Path, str]]:
        cls = datasets.CIFAR10
        folder = Path(root) / cls.base_folder
        files = [(folder / name, md5) for name, md5 in cls.train_list + cls.test_list]
        return [*files, (folder / cls.meta["filename"], cls.meta["md5"])]

    def _split_files(self, root: str, split: str) -> list[Path]:
        cls = datasets.CIFAR10
        names = [name for name, _ in (cls.train_list if split == "train" else cls.test_list)]
        return [Path(root) / cls.base_folder / n for n in [*names, cls.meta["filename"]]]

    def _format_problem(self, path: Path) -> str | None:
        try:
            entry = _unpickle(path)
        except Exception as error:  # noqa: BLE001 - a damaged pickle fails in many ways
            return f"it cannot be unpickled ({type(error).__name__}: {error})"
        if path.name == datasets.CIFAR10.meta["filename"]:
            ok = isinstance(entry, dict) and datasets.CIFAR10.meta["key"] in entry
            return None if ok else "it holds no 'label_names'"
        labels = entry.get("labels", entry.get("fine_labels")) if isinstance(entry, dict) else None
        if labels is None or "data" not in entry:
            return "it is not a CIFAR batch (a dict with 'data' and 'labels')"
        values = np.asarray(entry["data"]).size
        if values != 3072 * len(labels):
            return f"{values} pixel values for {len(labels)} labels (3072 per 32x32 RGB image)"
        return None


@DATASETS.register_module()
class SVHN(_TorchvisionFolder):
    required = {
        "train": ["train_32x32.mat"],
        "test": ["test_32x32.mat"],
        "extra": ["extra_32x32.mat"],
    }
    where = "Put the cropped-digits files <root>/{train,test}_32x32.mat (format 2) there."
    source = (
        "download {split}_32x32.mat (format 2, cropped digits) from "
        "http://ufldl.stanford.edu/housenumbers/ into {root}"
    )

    def _load(self, root: str, split: str) -> Dataset:
        return self._reader(datasets.SVHN)(root, split=split, download=False)

    def _checksummed(self, root: str) -> list[tuple[Path, str]]:
        _, name, md5 = datasets.SVHN.split_list[self.split]
        return [(Path(root) / name, md5)]

    def _split_files(self, root: str, split: str) -> list[Path]:
        return [Path(root) / datasets.SVHN.split_list[split][1]]

    def _format_problem(self, path: Path) -> str | None:
        from scipy.io import loadmat

        try:
            mat = loadmat(path)
        except Exception as error:  # noqa: BLE001 - scipy raises many types for a bad file
            return f"it is not a readable MATLAB file ({type(error).__name__}: {error})"
        images, labels = mat.get("X"), mat.get("y")
        if images is None or labels is None:
            return "it holds no 'X' and 'y' arrays"
        if images.ndim != 4 or images.shape[:3] != (32, 32, 3) or images.shape[3] != labels.size:
            return f"X has shape {images.shape} for {labels.size} labels, expected (32, 32, 3, N)"
        return None


@DATASETS.register_module()
class STL10(_TorchvisionFolder):
    required = {
        "train": ["stl10_binary/train_X.bin", "stl10_binary/train_y.bin"],
        "test": ["stl10_binary/test_X.bin", "stl10_binary/test_y.bin"],
    }
    where = "Unpack stl10_binary.tar.gz there, giving <root>/stl10_binary/{train,test}_{X,y}.bin."
    source = (
        "download stl10_binary.tar.gz from https://cs.stanford.edu/~acoates/stl10/ and unpack "
        "it into {root}"
    )
    image_bytes = 3 * 96 * 96

    def _load(self, root: str, split: str) -> Dataset:
        return self._reader(datasets.STL10)(root, split=split, download=False)

    def _checksummed(self, root: str) -> list[tuple[Path, str]]:
        cls = datasets.STL10
        return [
            (Path(root) / cls.base_folder / n, md5) for n, md5 in cls.train_list + cls.test_list
        ]

    def _split_files(self, root: str, split: str) -> list[Path]:
        folder = Path(root) / datasets.STL10.base_folder
        return [folder / f"{split}_X.bin", folder / f"{split}_y.bin"]

    def _format_problem(self, path: Path) -> str | None:
        size = path.stat().st_size
        if path.name.endswith("_X.bin"):
            if size == 0 or size % self.image_bytes:
                return f"{size} bytes, not a whole number of 96x96 RGB images ({self.image_bytes} each)"
            return None
        images = path.with_name(path.name.replace("_y.bin", "_X.bin"))
        count = images.stat().st_size // self.image_bytes if images.is_file() else size
        if size != count:
            return f"{size} labels for the {count} images of {images.name}: one of them is cut"
        return None
