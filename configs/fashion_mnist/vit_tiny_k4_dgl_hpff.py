# A small ViT trained with DGL+HPFF K=4 on Fashion-MNIST here (CPU): the ViT-B/16 definition
# scaled down (28x28 zero-padded to 32, patch 4 -> an 8x8 token grid + class token, 8 encoder
# blocks of width 96, 3 heads, MLP 192), 1-channel patch embedding; K=4 by the balanced split
# (2 blocks per module); token heads (LayerNorm, mean over grid tokens, 2 linear layers of
# width 96); PFF n=2 (2x2 groups of 4x4 tokens). AdamW 1e-3 with a 100-iteration warm-up and
# cosine over the fmnist_short schedule's 2 epochs; no RandAugment (2 epochs are far from
# the overfitting regime it is for).
_base_ = [
    "../_base_/models/vit_b16.py",
    "../_base_/datasets/fashion_mnist.py",
    "../_base_/schedules/fmnist_short.py",
    "../_base_/default_runtime.py",
]
model = dict(
    backbone=dict(
        image_size=32,
        patch_size=4,
        num_layers=8,
        num_heads=3,
        hidden_dim=96,
        mlp_dim=192,
        in_channels=1,
    ),
    image_size=32,
    method=dict(method="dgl_hpff", k=4, feature_dim=96, pff=dict(n=2)),
)
optim_wrapper = dict(
    optimizer=dict(_delete_=True, type="AdamW", lr=1e-3, weight_decay=0.05),
    paramwise_cfg=dict(
        norm_decay_mult=0.0,
        bias_decay_mult=0.0,
        custom_keys={".class_token": dict(decay_mult=0.0), ".pos_embedding": dict(decay_mult=0.0)},
    ),
)
