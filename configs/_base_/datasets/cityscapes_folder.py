# Cityscapes read from its folder layout: mmseg's CityscapesDataset and mmseg's transforms, the
# settings of mmseg's own cityscapes base (crop 512x1024).
#   data_root/leftImg8bit/{train,val}/<city>/<stem>_leftImg8bit.png
#   data_root/gtFine/{train,val}/<city>/<stem>_gtFine_labelTrainIds.png
# The trainIds files are not in the official zips: `python tools/convert_cityscapes.py ROOT`
# makes them. data_root: env CITYSCAPES_ROOT, else data/cityscapes; or --cfg-options
#   train_dataloader.dataset.data_root=... val_dataloader.dataset.data_root=...
#
# `CityscapesFolder` (hpff_dist/data/cityscapes/folder.py) checks the folders and label files first and
# names the command that fixes what is missing, then builds mmseg's dataset. Transform types are
# written with mmseg's scope ("mmseg.RandomCrop"): under our default scope an unscoped name would
# find ours first (torchvision's RandomCrop has other arguments), so the scope says whose it is;
# so does RandomResize's resize_type, the transform it builds by name.
# Images come out as uint8 (PackSegInputs); the model's SegDataPreProcessor normalises and pads.
# Train: resize 2048x1024 by a random ratio in [0.5, 2.0] (aspect kept), random crop 512x1024
# (re-drawn up to 10 times while one class covers 75% or more of it), flip, photometric
# distortion. Val/test: the full 2048x1024 image, labels loaded after the resize (not resized).
data_root = "{{$CITYSCAPES_ROOT:data/cityscapes}}"
image_scale = (2048, 1024)  # (w, h), as mmcv's Resize takes it
crop_size = (512, 1024)  # (h, w), as mmseg's RandomCrop takes it
batch_size = 2  # per process: 4 GPUs x 2 = mmseg's batch 8

train_pipeline = [
    dict(type="mmseg.LoadImageFromFile"),
    dict(type="mmseg.LoadAnnotations"),
    dict(
        type="mmseg.RandomResize",
        scale=image_scale,
        ratio_range=(0.5, 2.0),
        keep_ratio=True,
        resize_type="mmseg.Resize",  # built by name inside: plain "Resize" would be ours
    ),
    dict(type="mmseg.RandomCrop", crop_size=crop_size, cat_max_ratio=0.75),
    dict(type="mmseg.RandomFlip", prob=0.5),
    dict(type="mmseg.PhotoMetricDistortion"),
    dict(type="mmseg.PackSegInputs"),
]
test_pipeline = [
    dict(type="mmseg.LoadImageFromFile"),
    dict(type="mmseg.Resize", scale=image_scale, keep_ratio=True),
    dict(type="mmseg.LoadAnnotations"),
    dict(type="mmseg.PackSegInputs"),
]
# Multi-scale + flip test-time augmentation (tools/test.py --tta): mean of the softmax over the
# 12 views (mmseg's SegTTAModel arithmetic; segmentation/tta.py keeps each image's metainfo).
tta_model = dict(type="SegTTAAverage")
tta_ratios = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
tta_pipeline = [
    dict(type="mmseg.LoadImageFromFile"),
    dict(
        type="mmseg.TestTimeAug",
        transforms=[
            [dict(type="mmseg.Resize", scale_factor=r, keep_ratio=True) for r in tta_ratios],
            [
                dict(type="mmseg.RandomFlip", prob=0.0, direction="horizontal"),
                dict(type="mmseg.RandomFlip", prob=1.0, direction="horizontal"),
            ],
            [dict(type="mmseg.LoadAnnotations")],
            [dict(type="mmseg.PackSegInputs")],
        ],
    ),
]

train_dataloader = dict(
    batch_size=batch_size,
    num_workers=2,
    persistent_workers=True,
    # DefaultSampler + a seed per sample (hpff_dist/data/sample_seeds.py): augmentations fixed by
    # (seed, epoch, index), so a resumed run sees the same crops. The iteration-based train loop
    # cycles it (a new epoch, set_epoch, at each pass), as mmseg's InfiniteSampler would.
    sampler=dict(type="SeededSampler", shuffle=True),
    dataset=dict(
        type="CityscapesFolder",
        data_root=data_root,
        data_prefix=dict(img_path="leftImg8bit/train", seg_map_path="gtFine/train"),
        pipeline=train_pipeline,
    ),
)
val_dataloader = dict(
    batch_size=1,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type="DefaultSampler", shuffle=False),
    dataset=dict(
        type="CityscapesFolder",
        data_root=data_root,
        data_prefix=dict(img_path="leftImg8bit/val", seg_map_path="gtFine/val"),
        pipeline=test_pipeline,
    ),
)
test_dataloader = val_dataloader  # Cityscapes' test labels are not public: report val

# mmseg's IoUMetric that also returns each class's IoU/Acc (segmentation/evaluation.py)
val_evaluator = dict(type="PerClassIoUMetric", iou_metrics=["mIoU"])
test_evaluator = val_evaluator
