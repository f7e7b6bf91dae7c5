"""ImageNet data: webdataset shards (writer + readers), DALI pipelines, the ImageFolder reference.

Importing this package registers ``ImageNetFolder``, ``ImageNetShards`` (DATASETS),
``ShardAwareDistributedSampler`` (DATA_SAMPLERS), ``ImageNetTransform`` (TRANSFORMS) and
``imagenet_skip_bad_collate`` (FUNCTIONS) in the ``hpff_dist`` registries. DALI is imported only when the ``dali`` backend is built.

Loaders are built from config entries (``configs/_base_/datasets/imagenet_{folder,webdataset,
dali}.py``) by :func:`hpff_dist.data.loader_builder.build_dataloader`, the route training takes
through mmengine too. Every backend yields images in [0, 1]; only the model's data preprocessor
normalises.
"""

from hpff_dist.data.imagenet.collate import SkipBadCollate, skip_bad_collate
from hpff_dist.data.imagenet.errors import BadSampleBudget, BadSampleError, DataNotFoundError
from hpff_dist.data.imagenet.folder import ImageNetFolder
from hpff_dist.data.imagenet.samplers import ShardAwareDistributedSampler
from hpff_dist.data.imagenet.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_imagenet_transform,
)
from hpff_dist.data.imagenet.webdataset_loader import ImageNetShards

#: Backend names; ``configs/_base_/datasets/imagenet_<backend>.py`` configures each.
BACKENDS = ("folder", "webdataset", "dali")

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
    "SkipBadCollate",
    "build_imagenet_transform",
    "skip_bad_collate",
]
