# ResNet-32 trained end-to-end on Fashion-MNIST (1-channel stem).
_base_ = [
    "../_base_/models/cifar_resnet32.py",
    "../_base_/datasets/fashion_mnist.py",
    "../_base_/schedules/fmnist_short.py",
    "../_base_/default_runtime.py",
]
model = dict(backbone=dict(in_channels=1))
