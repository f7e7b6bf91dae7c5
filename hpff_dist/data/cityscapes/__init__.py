"""Cityscapes (and any mmseg folder dataset): the folder reference, webdataset shards, DALI.

``folder`` is mmseg's ``CityscapesDataset`` on the official layout, checked first
(:mod:`.folder`); ``webdataset`` reads the shards of ``tools/make_shards.py --layout
cityscapes`` through the very same mmseg pipeline (:mod:`.shards`, :mod:`.webdataset_loader`);
``dali`` decodes and augments them in a DALI graph (:mod:`.dali_loader`, imported on use).
``configs/_base_/datasets/cityscapes_<backend>.py`` configures each.
"""

from hpff_dist.data.cityscapes.folder import (
    CityscapesFolder,
    CityscapesLayoutError,
    check_label_values,
    convert_command,
)
from hpff_dist.data.cityscapes.webdataset_loader import CityscapesShards, ShardMemberBackend

#: Backend names; ``configs/_base_/datasets/cityscapes_<backend>.py`` configures each.
BACKENDS = ("folder", "webdataset", "dali")

__all__ = [
    "BACKENDS",
    "CityscapesFolder",
    "CityscapesLayoutError",
    "CityscapesShards",
    "ShardMemberBackend",
    "check_label_values",
    "convert_command",
]
