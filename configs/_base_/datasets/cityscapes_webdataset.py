# Cityscapes, `webdataset` backend: the shards of `tools/make_shards.py --layout cityscapes` read
# by index through wids, with the folder backend's mmseg pipeline unchanged: the image and label
# members are opened as `wds://<shard>#<key>.<ext>` paths by an mmengine file backend
# (hpff_dist/data/cityscapes/webdataset_loader.py), so mmseg's LoadImageFromFile/LoadAnnotations,
# RandomResize, RandomCrop (cat_max_ratio), flip and photometric distortion run as from the folder.
# data_root: env CITYSCAPES_SHARDS, else data/cityscapes-wds; or --data-root.
# Training: ShardAwareDistributedSampler (exact epochs, ceil(N / world) samples on every rank,
# shard-local order, a seed per sample); validation: DefaultSampler, whose interleaved split is the
# one mmengine's result collection undoes (distributed mIoU = one process's).
# A sample that cannot be loaded (corrupt PNG, label size differing from its image) is logged with
# shard and key and skipped while max_bad_samples allows (per process); past it the run stops.
_base_ = ["./cityscapes_folder.py"]
data_root = "{{$CITYSCAPES_SHARDS:data/cityscapes-wds}}"

train_dataloader = dict(
    sampler=dict(_delete_=True, type="ShardAwareDistributedSampler"),
    collate_fn=dict(type="hpff_dist.seg_skip_bad_collate"),
    dataset=dict(
        _delete_=True,
        type="CityscapesShards",
        root=data_root,
        split="train",
        pipeline={{_base_.train_pipeline}},
        max_bad_samples=10,
    ),
)
val_dataloader = dict(
    collate_fn=dict(type="hpff_dist.seg_skip_bad_collate"),
    dataset=dict(
        _delete_=True,
        type="CityscapesShards",
        root=data_root,
        split="val",
        pipeline={{_base_.test_pipeline}},
        max_bad_samples=0,  # validation skips nothing: its mIoU must cover every image
    ),
)
test_dataloader = val_dataloader
