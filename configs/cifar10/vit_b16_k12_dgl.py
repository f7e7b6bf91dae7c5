# ViT-B/16 DGL K=12 (one encoder block per module) on CIFAR-10 at 224 (paper, supplementary
# Table 2: 61.48 %, 2.69 GB): each of modules 0-10 trained by its own token head (LayerNorm,
# mean over the 14x14 grid tokens, 2 linear layers of width 768), module 11 by the net's head.
_base_ = ["./vit_b16_e2e.py"]
model = dict(method=dict(method="dgl", k=12))
