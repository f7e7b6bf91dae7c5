"""ImageNet data: webdataset shards (writer + readers), DALI pipelines, the ImageFolder reference.

Importing this package registers ``ImageNetFolder``, ``ImageNetShards`` (DATASETS),
``ShardAwareDistributedSampler`` (DATA_SAMPLERS) and ``ImageNetTransform`` (TRANSFORMS) in the
``hpff_dist`` registries. DALI is imported only when the ``dali`` backend is built.
"""

from hpff_dist.data.imagenet.errors import BadSampleBudget, BadSampleError, DataNotFoundError
from hpff_dist.data.imagenet.folder import ImageNetFolder
from hpff_dist.data.imagenet.loaders import BACKENDS, build_imagenet_dataloader
from hpff_dist.data.imagenet.samplers import ShardAwareDistributedSampler
from hpff_dist.data.imagenet.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_imagenet_transform,
)
from hpff_dist.data.imagenet.webdataset_loader import ImageNetShards

__all__ = [
    "BACKENDS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BadSampleBudget",
    "BadSampleError",
    "DataNotFoundError",
    "ImageNetFolder",
    "ImageNetShards",
    "ShardAwareDistributedSampler",
    "build_imagenet_dataloader",
    "build_imagenet_transform",
]
