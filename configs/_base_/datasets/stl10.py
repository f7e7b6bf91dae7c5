# STL-10 (96x96, labelled train/test) from a local folder holding stl10_binary/.
# Paper augmentation: zero-pad 4, random crop 96, horizontal flip.
data_root = "data/stl10"
data_preprocessor = dict(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])
batch_size = 128

train_pipeline = [
    dict(type="RandomCrop", size=96, padding=4),
    dict(type="RandomHorizontalFlip"),
    dict(type="ToFloatImage"),
]
test_pipeline = [dict(type="ToFloatImage")]

train_dataloader = dict(
    batch_size=batch_size,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type="DefaultSampler", shuffle=True),
    collate_fn=dict(type="default_collate"),
    dataset=dict(type="STL10", root=data_root, split="train", pipeline=train_pipeline),
)
val_dataloader = dict(
    batch_size=200,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type="DefaultSampler", shuffle=False),
    collate_fn=dict(type="default_collate"),
    dataset=dict(type="STL10", root=data_root, split="test", pipeline=test_pipeline),
)
test_dataloader = val_dataloader
val_evaluator = dict(type="TopKAccuracy", topk=(1, 5))
test_evaluator = val_evaluator
