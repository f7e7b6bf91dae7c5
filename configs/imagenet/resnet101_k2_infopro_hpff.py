# ResNet-101, InfoPro+HPFF K=2 on ImageNet (balanced split (no published table)): the settings of
# resnet101_k4_infopro_hpff.py (the reference's ImageNet recipe) with K=2.
# NB: with the independent level off and module 0 trained only through cascade 1,
# K=2 gives module 0 no loss of its own: its gradient is exactly end-to-end's.
_base_ = ["./resnet101_k4_infopro_hpff.py"]
model = dict(method=dict(k=2))
