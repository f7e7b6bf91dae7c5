# DeepLabV3 with a dilated ResNet-101 (D8), mmseg's own definition and settings (its
# deeplabv3_r50-d8.py with depth 101), trained by LocalEncoderDecoder (segmentation/): mmseg's
# EncoderDecoder whose train step is local learning over the backbone's 33 residual blocks.
#   backbone     ResNetV1c-101: deep stem, strides 1,2,1,1, dilations 1,1,2,4, contract_dilation
#   decode_head  ASPPHead 2048 -> 512, dilations 1,12,24,36, 19 classes: the last module's head
#   auxiliary    FCNHead 1024 -> 256 at the end of stage 3, loss weight 0.4: a tap, trains the
#                module holding block (3, 22) (the last module for the K=2/4/8 tables)
# SyncBN on GPUs; without a GPU the run config says BN (recorded in config_changes.json).
# mmseg starts the backbone from ImageNet weights ('open-mmlab://resnet101_v1c'); nothing is
# downloaded here: give a local copy with
#   --cfg-options model.backbone.init_cfg.type=Pretrained model.backbone.init_cfg.checkpoint=PATH
custom_imports = dict(imports=["segmentation"], allow_failed_imports=False)
norm_cfg = dict(type="SyncBN", requires_grad=True)
_crop_size = (512, 1024)  # (h, w), the training crop (the dataset base has its own)
model = dict(
    type="LocalEncoderDecoder",
    arch="resnet101",  # split tables of hpff_dist/local/split.py (K=4, 8; K=2 balanced)
    image_size=_crop_size,
    method=dict(method="e2e"),
    data_preprocessor=dict(
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_val=0,
        seg_pad_val=255,
        size=_crop_size,
    ),
    backbone=dict(
        type="mmseg.ResNetV1c",
        depth=101,
        num_stages=4,
        out_indices=(0, 1, 2, 3),
        dilations=(1, 1, 2, 4),
        strides=(1, 2, 1, 1),
        norm_cfg=norm_cfg,
        norm_eval=False,
        style="pytorch",
        contract_dilation=True,
    ),
    decode_head=dict(
        type="mmseg.ASPPHead",
        in_channels=2048,
        in_index=3,
        channels=512,
        dilations=(1, 12, 24, 36),
        dropout_ratio=0.1,
        num_classes=19,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type="mmseg.CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
    ),
    auxiliary_head=dict(
        type="mmseg.FCNHead",
        in_channels=1024,
        in_index=2,
        channels=256,
        num_convs=1,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=19,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type="mmseg.CrossEntropyLoss", use_sigmoid=False, loss_weight=0.4),
    ),
    train_cfg=dict(),
    test_cfg=dict(mode="whole"),
)
