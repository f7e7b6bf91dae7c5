# Fashion-MNIST segmentation (hpff_dist/data/fmnist_segmentation.py): 64x64 canvases of 1-3 real
# Fashion-MNIST garments (scaled to 24-40 px, tinted, pasted over noise, later ones in front),
# each pixel labelled with its front-most visible garment's class or background (11 classes).
# Garments of the train canvases come from Fashion-MNIST's training images, those of val from
# its test images (Debian's dataset-fashion-mnist package). Canvas i of a split depends on
# (seed, split, i) only; the train-time flip is seeded per (seed, epoch, index) by the
# SeededSampler. mmseg's transforms, named with mmseg's scope, and IoU metric as in the
# Cityscapes base; images come out as uint8 BGR (PackSegInputs), the model normalises them.
data_root = "/usr/share/datasets/fashion-mnist"
crop_size = (64, 64)  # (h, w): the canvas is the training crop (nothing is padded)
batch_size = 8

train_pipeline = [dict(type="mmseg.RandomFlip", prob=0.5), dict(type="mmseg.PackSegInputs")]
test_pipeline = [dict(type="mmseg.PackSegInputs")]

train_dataloader = dict(
    batch_size=batch_size,
    num_workers=1,
    persistent_workers=True,
    # DefaultSampler + a seed per sample (hpff_dist/data/sample_seeds.py): the flips are fixed by
    # (seed, epoch, index), so a resumed run sees the same batches.
    sampler=dict(type="SeededSampler", shuffle=True),
    dataset=dict(
        type="FashionMNISTSegmentation",
        root=data_root,
        split="train",
        num_canvases=4000,  # generated on the fly: 2 epochs of 500 batches fit the budget
        canvas_size=crop_size,
        garments=(1, 3),
        garment_size=(24, 40),
        seed=0,
        pipeline=train_pipeline,
    ),
)
val_dataloader = dict(
    batch_size=50,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type="DefaultSampler", shuffle=False),
    dataset=dict(
        type="FashionMNISTSegmentation",
        root=data_root,
        split="val",
        num_canvases=500,
        canvas_size=crop_size,
        garments=(1, 3),
        garment_size=(24, 40),
        seed=0,
        pipeline=test_pipeline,
    ),
)
test_dataloader = val_dataloader

# mmseg's IoUMetric that also returns each class's IoU/Acc (segmentation/evaluation.py)
val_evaluator = dict(type="PerClassIoUMetric", iou_metrics=["mIoU"])
test_evaluator = val_evaluator
