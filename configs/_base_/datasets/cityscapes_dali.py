# Cityscapes, `dali` backend: the (image, label) shards of
#   python tools/make_shards.py CITYSCAPES_ROOT OUT --layout cityscapes --split train (and val)
# read by DALI's fn.readers.webdataset, sharded by global rank; PNG decoding on the GPU when
# there is one (device="auto"), the same pipeline on the CPU otherwise; labels on the CPU,
# nearest neighbour only. data_root: env CITYSCAPES_SHARDS, else data/cityscapes-wds; or
#   --cfg-options train_dataloader.root=... val_dataloader.root=... test_dataloader.root=...
# These loader dicts have a `type` (no dataset/sampler keys, so this base does not inherit
# cityscapes_folder.py): hpff_dist.data.loader_builder.materialize_dataloaders turns them into
# DataLoader-compatible objects that build the pipeline after the process group exists.
# Batches are mmseg's (uint8 BGR images + SegDataSamples, as PackSegInputs makes them): the
# model's SegDataPreProcessor normalises and pads, as for the folder backend.
# The settings of cityscapes_folder.py (mmseg's own): train resize 2048x1024 by a random ratio
# in [0.5, 2.0] (aspect kept), random crop 512x1024 (re-drawn up to 10 times while one class
# covers 75% or more of it: mmseg's rule exactly), flip, photometric distortion (brightness and
# contrast exactly; saturation and hue by DALI's fn.hsv: hpff_dist/data/cityscapes/dali_loader.py).
# Val/test: the full 2048x1024 image, labels not resized.
# DALI cannot skip a PNG that fails to decode mid-run: the run stops naming shard and key
# (truncated tars are found and skipped up front under max_bad_samples; docs/data.md).
data_root = "{{$CITYSCAPES_SHARDS:data/cityscapes-wds}}"
image_scale = (2048, 1024)  # (w, h), as mmcv's Resize takes it
crop_size = (512, 1024)  # (h, w), as mmseg's RandomCrop takes it
batch_size = 2  # per process: 4 GPUs x 2 = mmseg's batch 8

train_dataloader = dict(
    type="DaliSegLoader",
    root=data_root,
    split="train",
    batch_size=batch_size,
    scale=image_scale,
    ratio_range=(0.5, 2.0),
    crop_size=crop_size,
    cat_max_ratio=0.75,
    flip_prob=0.5,
    photometric=True,
    num_threads=4,
    device="auto",
    seed=0,  # the reader's shuffle seed, the same on every rank; augmentations add the rank
    max_bad_samples=10,
)
val_dataloader = dict(
    type="DaliSegLoader",
    root=data_root,
    split="val",
    batch_size=1,
    scale=image_scale,
    num_threads=4,
    device="auto",
)
test_dataloader = val_dataloader  # Cityscapes' test labels are not public: report val

# mmseg's IoUMetric that also returns each class's IoU/Acc (segmentation/evaluation.py)
val_evaluator = dict(type="PerClassIoUMetric", iou_metrics=["mIoU"])
test_evaluator = val_evaluator
