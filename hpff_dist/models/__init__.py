"""Backbones and classifiers; importing this registers them."""

from hpff_dist.models import classifier, data_preprocessor, imagenet_resnet, vit  # noqa: F401
from hpff_dist.models.cifar_resnet import CifarResNet, resnet32, resnet110
from hpff_dist.registry import MODELS

MODELS.register_module(module=CifarResNet)

__all__ = ["CifarResNet", "resnet32", "resnet110"]
