# CIFAR ResNet-32 (5 basic blocks per stage, widths 16-32-64); method chosen by the experiment.
model = dict(
    type="LocalClassifier",
    arch="resnet32",
    backbone=dict(type="CifarResNet", depth=32),
    num_classes=10,
    image_size=32,
    method=dict(method="e2e"),
)
