# CIFAR-10 upsampled to 224 for ViT-B/16 (the paper's setting; folder as cifar10.py).
# Augmentation, the usual recipe for a ViT trained from scratch on CIFAR: the paper's crop +
# flip at 32 px, then RandAugment (2 ops, magnitude 9; run at 32 px where it is 49x cheaper
# than at 224 and the same operations), then a bilinear, antialiased resize to 224. A ViT has
# no convolutional prior, so on 50k images it overfits without strong augmentation; Mixup /
# CutMix (batch-level) are not in the pipeline, label smoothing 0.1 is (the model's loss).
_base_ = ["./cifar10.py"]
train_pipeline = [
    dict(type="Pad", padding=4, padding_mode="reflect"),
    dict(type="RandomCrop", size=32),
    dict(type="RandomHorizontalFlip"),
    dict(type="RandAugment", num_ops=2, magnitude=9),
    dict(type="Resize", size=224, antialias=True),
    dict(type="ToFloatImage"),
]
test_pipeline = [dict(type="Resize", size=224, antialias=True), dict(type="ToFloatImage")]
train_dataloader = dict(num_workers=8, dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(batch_size=500, dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
