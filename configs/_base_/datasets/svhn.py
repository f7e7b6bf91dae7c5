# SVHN (cropped digits, train split only as in the paper) from a local folder holding
# {train,test}_32x32.mat. Paper augmentation: zero-pad 2, random crop 32, no flip (digits).
# The loader layout is CIFAR-10's; only the data and augmentation differ.
_base_ = ["./cifar10.py"]
data_root = "data/svhn"
data_preprocessor = dict(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])
train_pipeline = [dict(type="RandomCrop", size=32, padding=2), dict(type="ToFloatImage")]

train_dataloader = dict(dataset=dict(type="SVHN", root=data_root, pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(type="SVHN", root=data_root))
test_dataloader = val_dataloader
