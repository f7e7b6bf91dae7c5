# ResNet-101, InfoPro K=8 on ImageNet (reference split table resnet101 K=8): the settings of
# resnet101_k4_infopro.py (the reference's ImageNet recipe) with K=8.
_base_ = ["./resnet101_k4_infopro.py"]
model = dict(method=dict(k=8))
