# Fashion-MNIST from Debian's dataset-fashion-mnist package (28x28 grey, zero-padded to 32).
# One grey channel into a 1-channel stem: replicating grey to RGB would triple the stem's
# input work and add nothing.
data_root = "/usr/share/datasets/fashion-mnist"
data_preprocessor = dict(mean=[0.2860], std=[0.3530])
batch_size = 128

train_pipeline = [
    dict(type="Pad", padding=2),
    dict(type="RandomCrop", size=32, padding=2),
    dict(type="RandomHorizontalFlip"),
    dict(type="ToFloatImage"),
]
test_pipeline = [dict(type="Pad", padding=2), dict(type="ToFloatImage")]

train_dataloader = dict(
    batch_size=batch_size,
    num_workers=1,
    persistent_workers=True,
    # DefaultSampler + a seed per sample: augmentations fixed by (seed, epoch, index), so a
    # resumed run and any num_workers see the same batches (hpff_dist/data/sample_seeds.py)
    sampler=dict(type="SeededSampler", shuffle=True),
    collate_fn=dict(type="default_collate"),
    dataset=dict(type="FashionMNIST", root=data_root, split="train", pipeline=train_pipeline),
)
val_dataloader = dict(
    batch_size=500,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type="DefaultSampler", shuffle=False),
    collate_fn=dict(type="default_collate"),
    dataset=dict(type="FashionMNIST", root=data_root, split="test", pipeline=test_pipeline),
)
test_dataloader = val_dataloader
val_evaluator = dict(type="TopKAccuracy", topk=(1, 5))
test_evaluator = val_evaluator
