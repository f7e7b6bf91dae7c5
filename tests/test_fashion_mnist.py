"""Fashion-MNIST straight from Debian's package, checked against torchvision's IDX reader."""

import numpy as np
import pytest
import torch
from torchvision.datasets.mnist import read_image_file, read_label_file

from hpff_dist.data.fashion_mnist import DEBIAN_ROOT, FashionMNIST, read_idx


@pytest.mark.parametrize(("split", "n"), [("train", 60000), ("test", 10000)])
def test_sizes_and_class_balance(split, n):
    ds = FashionMNIST(split=split)
    assert len(ds) == n
    counts = torch.bincount(ds.targets, minlength=10)
    assert counts.tolist() == [n // 10] * 10
    image, label = ds[0]
    assert image.shape == (1, 28, 28) and image.dtype == torch.uint8
    assert 0 <= label < 10


def test_decoding_matches_independent_reader(tmp_path):
    # torchvision's reader needs the files un-gzipped: an independent decoding of IDX.
    import gzip
    import shutil

    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        with gzip.open(f"{DEBIAN_ROOT}/{name}.gz") as src, open(tmp_path / name, "wb") as dst:
            shutil.copyfileobj(src, dst)
    ref_images = read_image_file(str(tmp_path / "t10k-images-idx3-ubyte"))
    ref_labels = read_label_file(str(tmp_path / "t10k-labels-idx1-ubyte"))
    ds = FashionMNIST(split="test")
    assert torch.equal(ds.images[:, 0], ref_images)
    assert torch.equal(ds.targets, ref_labels.long())


def test_read_idx_rejects_wrong_magic_and_truncation(tmp_path):
    bad = tmp_path / "bad.idx"
    bad.write_bytes(b"\x00\x00\x0d\x01" + (3).to_bytes(4, "big") + b"\x00" * 12)
    with pytest.raises(ValueError, match="not a uint8 IDX"):
        read_idx(bad)
    short = tmp_path / "short.idx"
    short.write_bytes(b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + b"\x01\x02")
    with pytest.raises(ValueError, match="holds 2 values"):
        read_idx(short)
    good = tmp_path / "good.idx"
    good.write_bytes(
        b"\x00\x00\x08\x02" + (2).to_bytes(4, "big") + (3).to_bytes(4, "big") + bytes(range(6))
    )
    assert np.array_equal(read_idx(good), np.arange(6, dtype=np.uint8).reshape(2, 3))


def test_missing_folder_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        FashionMNIST(root=str(tmp_path), split="train")
