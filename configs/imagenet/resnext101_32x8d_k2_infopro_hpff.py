# ResNeXt-101 32x8d, InfoPro+HPFF K=2 on ImageNet (balanced split (no published table)), as the reference trains
# it on ImageNet: cascade level only (independent level off, w_ind=0), cascade loss weight 1,
# module 0 (with the stem) learns through cascade 1, the last module through the net's own
# classifier on the cascade level; InfoPro cascade heads with constant lambdas (5, 0.75); PFF
# n=2 (the paper's variant).
# NB: with the independent level off and module 0 trained only through cascade 1,
# K=2 gives module 0 no loss of its own: its gradient is exactly end-to-end's.
# Backend: DALI; for another, swap the datasets base for imagenet_webdataset.py / imagenet_folder.py.
_base_ = [
    "../_base_/models/imagenet_resnext101_32x8d.py",
    "../_base_/datasets/imagenet_dali.py",
    "../_base_/schedules/imagenet_90e.py",
    "../_base_/default_runtime.py",
]
model = dict(
    method=dict(
        method="infopro_hpff",
        k=2,
        w_ind=0.0,
        w_cas=1.0,
        first_module="cascade_only",
        last_module="cascade",
        aux_net="bottleneck",  # reference ImageNet aux net: 1x1 reduce, 2 strided 3x3, 1x1 expand
        feature_dim=2048,  # the bottleneck's expand width (reference: 2048)
        decoder="progressive",  # 1x1 reduce to decoder_width, then x2 upsampling stages
        decoder_width=128,
        ixx_1=5.0,  # reference ImageNet: lambda_1 = 5, lambda_2 = 0.75 on every local module
        ixy_1=0.75,
        ixx_2=5.0,
        ixy_2=0.75,
        pff=dict(n=2, variant="paper"),
    )
)
