# SVHN (cropped digits, train split only as in the paper) from a local folder holding
# {train,test}_32x32.mat. Paper augmentation: zero-pad 2, random crop 32, no flip (digits).
data_root = "data/svhn"
data_preprocessor = dict(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])
batch_size = 1024

train_pipeline = [dict(type="RandomCrop", size=32, padding=2), dict(type="ToFloatImage")]
test_pipeline = [dict(type="ToFloatImage")]

train_dataloader = dict(
    batch_size=batch_size,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type="DefaultSampler", shuffle=True),
    collate_fn=dict(type="default_collate"),
    dataset=dict(type="SVHN", root=data_root, split="train", pipeline=train_pipeline),
)
val_dataloader = dict(
    batch_size=1000,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type="DefaultSampler", shuffle=False),
    collate_fn=dict(type="default_collate"),
    dataset=dict(type="SVHN", root=data_root, split="test", pipeline=test_pipeline),
)
test_dataloader = val_dataloader
val_evaluator = dict(type="TopKAccuracy", topk=(1, 5))
test_evaluator = val_evaluator
