# CIFAR-10 from a local folder holding cifar-10-batches-py/ (never downloaded).
# Paper augmentation: reflect-pad 4, random crop 32, horizontal flip.
data_root = "data/cifar10"
data_preprocessor = dict(mean=[0.4914, 0.4824, 0.4467], std=[0.2471, 0.2435, 0.2616])
batch_size = 1024

train_pipeline = [
    dict(type="Pad", padding=4, padding_mode="reflect"),
    dict(type="RandomCrop", size=32),
    dict(type="RandomHorizontalFlip"),
    dict(type="ToFloatImage"),
]
test_pipeline = [dict(type="ToFloatImage")]

train_dataloader = dict(
    batch_size=batch_size,
    num_workers=4,
    persistent_workers=True,
    # DefaultSampler + a seed per sample: augmentations fixed by (seed, epoch, index), so a
    # resumed run and any num_workers see the same batches (hpff_dist/data/sample_seeds.py)
    sampler=dict(type="SeededSampler", shuffle=True),
    collate_fn=dict(type="default_collate"),
    dataset=dict(type="CIFAR10", root=data_root, split="train", pipeline=train_pipeline),
)
val_dataloader = dict(
    batch_size=1000,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type="DefaultSampler", shuffle=False),
    collate_fn=dict(type="default_collate"),
    dataset=dict(type="CIFAR10", root=data_root, split="test", pipeline=test_pipeline),
)
test_dataloader = val_dataloader
val_evaluator = dict(type="TopKAccuracy", topk=(1, 5))
test_evaluator = val_evaluator
