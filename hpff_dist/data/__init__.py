"""Datasets, transforms and loaders; importing this registers them."""

from hpff_dist.data import fashion_mnist, imagenet, torchvision_folders, transforms  # noqa: F401
