# ResNet-32, e2e  on cifar10: the paper's hyper-parameters (see the _base_ schedule).
_base_ = [
    "../_base_/models/cifar_resnet32.py",
    "../_base_/datasets/cifar10.py",
    "../_base_/schedules/cifar_400e.py",
    "../_base_/default_runtime.py",
]
model = dict(method=dict(method="e2e"))
