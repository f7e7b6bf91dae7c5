# ResNeXt-101 32x8d on ImageNet: the method, data and schedule of resnet101_e2e.py with another
# backbone (and the reference split table of resnext101_32x8d where the method uses one).
_base_ = ["./resnet101_e2e.py"]
model = dict(arch="resnext101_32x8d", backbone=dict(arch="resnext101_32x8d"))
