# CIFAR ResNet-110 (18 basic blocks per stage, widths 16-32-64).
model = dict(
    type="LocalClassifier",
    arch="resnet110",
    backbone=dict(type="CifarResNet", depth=110),
    num_classes=10,
    image_size=32,
    method=dict(method="e2e"),
)
