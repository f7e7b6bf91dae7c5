# ResNeXt-101 32x8d on ImageNet: the method, data and schedule of resnet101_k2_infopro_hpff.py with another
# backbone (and the reference split table of resnext101_32x8d where the method uses one).
_base_ = ["./resnet101_k2_infopro_hpff.py"]
model = dict(arch="resnext101_32x8d", backbone=dict(arch="resnext101_32x8d"))
