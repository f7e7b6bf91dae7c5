"""Datasets, transforms and loaders; importing this registers them."""

from hpff_dist.data import fashion_mnist, torchvision_folders, transforms  # noqa: F401
