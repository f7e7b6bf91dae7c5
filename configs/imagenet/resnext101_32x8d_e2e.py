# ResNeXt-101 32x8d, end-to-end backprop on ImageNet (90 epochs, SGD Nesterov, lr 0.05 per 128 images).
# Backend: DALI; for another, swap the datasets base for imagenet_webdataset.py / imagenet_folder.py.
_base_ = [
    "../_base_/models/imagenet_resnext101_32x8d.py",
    "../_base_/datasets/imagenet_dali.py",
    "../_base_/schedules/imagenet_90e.py",
    "../_base_/default_runtime.py",
]
model = dict(method=dict(method="e2e"))
