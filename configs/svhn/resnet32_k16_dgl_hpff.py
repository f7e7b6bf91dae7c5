# ResNet-32, dgl_hpff K=16 on svhn: the paper's hyper-parameters (see the _base_ schedule).
_base_ = [
    "../_base_/models/cifar_resnet32.py",
    "../_base_/datasets/svhn.py",
    "../_base_/schedules/cifar_400e.py",
    "../_base_/default_runtime.py",
]
model = dict(method=dict(method="dgl_hpff", k=16))
