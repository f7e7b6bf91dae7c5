# ViT-B/16: torchvision's vit_b_16 definition (no pretrained weights), regrouped as stem (patch
# embedding + class token + position embedding) + 12 encoder blocks + head (final LayerNorm +
# class-token classifier). No split table: any K is a balanced split (K=12: one block per
# module). Blocks emit tokens (NLC, 1 class token + the 14x14 grid at 224), so the local
# methods use the token heads: aux_net='token2f' (LayerNorm, mean over grid tokens, 2 linear
# layers of width feature_dim) and decoder='token' (grid tokens -> 14x14 map -> InfoPro's
# decoder). Experiments set the method and K; these head choices carry over.
model = dict(
    type="LocalClassifier",
    arch=None,
    backbone=dict(
        type="TorchvisionViT",
        image_size=224,
        patch_size=16,
        num_layers=12,
        num_heads=12,
        hidden_dim=768,
        mlp_dim=3072,
        dropout=0.0,
        attention_dropout=0.0,
    ),
    num_classes=10,
    image_size=224,
    method=dict(method="e2e", aux_net="token2f", decoder="token", feature_dim=768),
)
