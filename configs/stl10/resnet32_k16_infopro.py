# ResNet-32, infopro K=16 on stl10: the paper's hyper-parameters (see the _base_ schedule).
_base_ = [
    "../_base_/models/cifar_resnet32.py",
    "../_base_/datasets/stl10.py",
    "../_base_/schedules/stl10_400e.py",
    "../_base_/default_runtime.py",
]
model = dict(method=dict(method="infopro", k=16), image_size=96)
