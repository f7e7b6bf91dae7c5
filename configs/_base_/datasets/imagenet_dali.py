# ImageNet, `dali` backend: the shards of tools/make_shards.py read by DALI's
# fn.readers.webdataset, sharded by global rank; nvJPEG decoding on the GPU when there is one
# (device="auto"), the same pipeline on the CPU otherwise.
# These loader dicts have a `type`: hpff_dist.data.loader_builder.materialize_dataloaders turns
# them into DataLoader-compatible objects that build the pipeline after the process group exists.
# data_root: env IMAGENET_SHARDS, else data/imagenet-wds; or --cfg-options
#   train_dataloader.root=... val_dataloader.root=... test_dataloader.root=...
# Images come out in [0, 1]: the model's data_preprocessor is the one place that normalises.
# DALI cannot skip a JPEG that fails to decode mid-run: the run stops naming shard and key
# (truncated tars are found and skipped up front under max_bad_samples; docs/data.md).
data_root = "{{$IMAGENET_SHARDS:data/imagenet-wds}}"
image_size = 224
batch_size = 64

train_dataloader = dict(
    type="DaliImageNetLoader",
    root=data_root,
    split="train",
    batch_size=batch_size,
    num_threads=8,
    image_size=image_size,
    device="auto",
    seed=0,
    max_bad_samples=100,
)
val_dataloader = dict(
    type="DaliImageNetLoader",
    root=data_root,
    split="val",
    batch_size=100,
    num_threads=4,
    image_size=image_size,
    device="auto",
)
test_dataloader = val_dataloader  # ImageNet's test labels are not public: report val
val_evaluator = dict(type="TopKAccuracy", topk=(1, 5))
test_evaluator = val_evaluator
