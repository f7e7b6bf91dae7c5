# ResNet-152 on ImageNet: the method, data and schedule of resnet101_k4_infopro_hpff.py with another
# backbone (and the reference split table of resnet152 where the method uses one).
_base_ = ["./resnet101_k4_infopro_hpff.py"]
model = dict(arch="resnet152", backbone=dict(arch="resnet152"))
