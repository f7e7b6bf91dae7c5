# ResNet-32 infopro_hpff K=16 on Fashion-MNIST (1-channel stem), the short CPU schedule.
_base_ = ["./resnet32_e2e.py"]
model = dict(method=dict(method="infopro_hpff", k=16))
