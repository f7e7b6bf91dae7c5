# ImageNet, `webdataset` backend: the shards of tools/make_shards.py read by index through wids
# (exact epochs, the same number of batches on every rank), PIL decoding in DataLoader workers.
# data_root: env IMAGENET_SHARDS, else data/imagenet-wds; or --cfg-options
#   train_dataloader.dataset.root=... val_dataloader.dataset.root=... test_dataloader.dataset.root=...
# Images come out in [0, 1] (normalize=False): the model's data_preprocessor normalises.
# A corrupt sample is logged with its shard and key and skipped while the count stays within
# max_bad_samples (per process); past it the run stops (docs/data.md).
data_root = "{{$IMAGENET_SHARDS:data/imagenet-wds}}"
image_size = 224
batch_size = 64

train_dataloader = dict(
    batch_size=batch_size,
    num_workers=8,
    persistent_workers=True,
    pin_memory=True,
    sampler=dict(type="ShardAwareDistributedSampler", shuffle=True),
    collate_fn=dict(type="hpff_dist.imagenet_skip_bad_collate"),
    dataset=dict(
        type="ImageNetShards",
        root=data_root,
        split="train",
        image_size=image_size,
        normalize=False,
        max_bad_samples=100,
    ),
)
val_dataloader = dict(
    batch_size=100,
    num_workers=4,
    persistent_workers=True,
    pin_memory=True,
    sampler=dict(type="ShardAwareDistributedSampler", shuffle=False),
    collate_fn=dict(type="hpff_dist.imagenet_skip_bad_collate"),
    dataset=dict(
        type="ImageNetShards", root=data_root, split="val", image_size=image_size, normalize=False
    ),
)
test_dataloader = val_dataloader  # ImageNet's test labels are not public: report val
val_evaluator = dict(type="TopKAccuracy", topk=(1, 5))
test_evaluator = val_evaluator
