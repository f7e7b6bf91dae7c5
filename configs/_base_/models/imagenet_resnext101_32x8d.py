# ImageNet ResNeXt-101 32x8d (stages 3-4-23-3, 32 groups x 8 channels): torchvision's definition (no
# pretrained weights), regrouped as stem + 33 blocks + head; split tables 'arch' of
# hpff_dist/local/split.py. The model normalises: loaders yield images in [0, 1].
model = dict(
    type="LocalClassifier",
    arch="resnext101_32x8d",
    backbone=dict(type="TorchvisionResNet", arch="resnext101_32x8d", zero_init_residual=False),
    num_classes=1000,
    image_size=224,
    method=dict(method="e2e"),
    data_preprocessor=dict(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
)
