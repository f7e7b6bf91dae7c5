# ImageNet, `folder` backend (the reference): torchvision ImageFolder on
# data_root/{train,val}/<wnid>/*.JPEG, PIL decoding in DataLoader workers.
# data_root: env IMAGENET_ROOT, else data/imagenet; or --cfg-options
#   train_dataloader.dataset.root=... val_dataloader.dataset.root=... test_dataloader.dataset.root=...
# Images come out in [0, 1]: the model's data_preprocessor is the one place that normalises
# (the datasets have no normalize option), so InfoPro's decoders can reconstruct the raw image.
# batch_size is per process; the lr follows the total batch (auto_scale_lr in
# schedules/imagenet_90e.py).
# Train: RandomResizedCrop 224 + flip. Val: resize 256 + centre crop 224.
data_root = "{{$IMAGENET_ROOT:data/imagenet}}"
image_size = 224
batch_size = 64

train_dataloader = dict(
    batch_size=batch_size,
    num_workers=8,
    persistent_workers=True,
    pin_memory=True,
    # DefaultSampler + a seed per sample: augmentations fixed by (seed, epoch, index), so a
    # resumed run and any num_workers see the same batches (hpff_dist/data/sample_seeds.py)
    sampler=dict(type="SeededSampler", shuffle=True),
    collate_fn=dict(type="hpff_dist.imagenet_skip_bad_collate"),
    dataset=dict(
        type="ImageNetFolder",
        root=data_root,
        split="train",
        image_size=image_size,
        max_bad_samples=100,
    ),
)
val_dataloader = dict(
    batch_size=100,
    num_workers=4,
    persistent_workers=True,
    pin_memory=True,
    sampler=dict(type="DefaultSampler", shuffle=False),
    collate_fn=dict(type="hpff_dist.imagenet_skip_bad_collate"),
    dataset=dict(type="ImageNetFolder", root=data_root, split="val", image_size=image_size),
)
test_dataloader = val_dataloader  # ImageNet's test labels are not public: report val
val_evaluator = dict(type="TopKAccuracy", topk=(1, 5))
test_evaluator = val_evaluator
