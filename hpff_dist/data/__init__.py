"""Datasets, transforms and loaders; importing this registers them."""

from hpff_dist.data import (  # noqa: F401
    cityscapes,
    fashion_mnist,
    fmnist_segmentation,
    imagenet,
    replica_sampler,
    sample_seeds,
    torchvision_folders,
    transforms,
)
