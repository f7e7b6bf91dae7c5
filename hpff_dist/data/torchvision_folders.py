"""CIFAR-10, SVHN and STL-10 read from a folder the user provides, never downloaded.

torchvision's dataset classes know the on-disk formats; we only check the files are there
first, so a missing folder says what to put where instead of suggesting ``download=True``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision import datasets
from torchvision.transforms.v2 import functional as F

from hpff_dist.data.transforms import build_pipeline
from hpff_dist.registry import DATASETS


class _TorchvisionFolder(Dataset):
    """Wraps a torchvision dataset; items are ``(pipeline(uint8 CHW tensor), label)``."""

    #: files/folders (relative to root) that must exist, per split
    required: dict[str, list[str]] = {}
    #: how to obtain them, for the error message
    where: str = ""

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
        self.data = self._load(root, split)
        self.pipeline = build_pipeline(pipeline)

    def _load(self, root: str, split: str) -> Dataset:
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

    @property
    def metainfo(self) -> dict:
        """Class names, read by mmengine's evaluator and visualizer."""
        return {"classes": tuple(getattr(self.data, "classes", ()))}

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.data[index]
        return self.pipeline(F.pil_to_tensor(image)), int(label)


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

    def _load(self, root: str, split: str) -> Dataset:
        return self._reader(datasets.CIFAR10)(root, train=split == "train", download=False)


@DATASETS.register_module()
class SVHN(_TorchvisionFolder):
    required = {
        "train": ["train_32x32.mat"],
        "test": ["test_32x32.mat"],
        "extra": ["extra_32x32.mat"],
    }
    where = "Put the cropped-digits files <root>/{train,test}_32x32.mat (format 2) there."

    def _load(self, root: str, split: str) -> Dataset:
        return self._reader(datasets.SVHN)(root, split=split, download=False)


@DATASETS.register_module()
class STL10(_TorchvisionFolder):
    required = {
        "train": ["stl10_binary/train_X.bin", "stl10_binary/train_y.bin"],
        "test": ["stl10_binary/test_X.bin", "stl10_binary/test_y.bin"],
    }
    where = "Unpack stl10_binary.tar.gz there, giving <root>/stl10_binary/{train,test}_{X,y}.bin."

    def _load(self, root: str, split: str) -> Dataset:
        return self._reader(datasets.STL10)(root, split=split, download=False)
