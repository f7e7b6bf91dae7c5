# STL-10 (96x96, labelled train/test) from a local folder holding stl10_binary/.
# Paper augmentation: zero-pad 4, random crop 96, horizontal flip; batch 128.
# The loader layout is CIFAR-10's; only the data, augmentation and batch differ.
_base_ = ["./cifar10.py"]
data_root = "data/stl10"
data_preprocessor = dict(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])
batch_size = 128
train_pipeline = [
    dict(type="RandomCrop", size=96, padding=4),
    dict(type="RandomHorizontalFlip"),
    dict(type="ToFloatImage"),
]

train_dataloader = dict(
    batch_size=batch_size, dataset=dict(type="STL10", root=data_root, pipeline=train_pipeline)
)
val_dataloader = dict(batch_size=200, dataset=dict(type="STL10", root=data_root))
test_dataloader = val_dataloader
