# ResNet-32 infopro K=16 on Fashion-MNIST (1-channel stem), the short CPU schedule.
_base_ = ["./resnet32_e2e.py"]
model = dict(method=dict(method="infopro", k=16))
