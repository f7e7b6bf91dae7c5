# ResNet-101, InfoPro K=2 on ImageNet (balanced split (no published table)): the settings of
# resnet101_k4_infopro.py (the reference's ImageNet recipe) with K=2.
_base_ = ["./resnet101_k4_infopro.py"]
model = dict(method=dict(k=2))
