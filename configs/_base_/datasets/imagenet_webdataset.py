# ImageNet, `webdataset` backend: the shards of tools/make_shards.py read by index through wids
# (exact epochs, the same number of batches on every rank), PIL decoding in DataLoader workers.
# The loader layout and transforms are the folder backend's; only the dataset and sampler differ.
# data_root: env IMAGENET_SHARDS, else data/imagenet-wds; or --data-root.
# A corrupt sample is logged with its shard and key and skipped while the count stays within
# max_bad_samples (per process); past it the run stops (docs/data.md).
_base_ = ["./imagenet_folder.py"]
data_root = "{{$IMAGENET_SHARDS:data/imagenet-wds}}"

train_dataloader = dict(
    sampler=dict(type="ShardAwareDistributedSampler"),
    dataset=dict(type="ImageNetShards", root=data_root),
)
val_dataloader = dict(
    sampler=dict(type="ShardAwareDistributedSampler"),
    dataset=dict(type="ImageNetShards", root=data_root),
)
test_dataloader = val_dataloader
