# ViT-B/16 DGL+HPFF K=12 on CIFAR-10 at 224 (paper, supplementary Table 2: 74.65 %, 2.64 GB):
# HiLo (independent level w_ind 0.001 + cascade over pairs of blocks w_cas 0.999, module 0
# through cascade 1) with token heads, PFF n=2 on both levels: the 14x14 token grid cut into
# 2x2 groups of 7x7 tokens, the same head on each group, outputs averaged, one group at a time;
# the class token is in no group (it learns through attention and, in the last module, the
# net's classifier).
_base_ = ["./vit_b16_e2e.py"]
model = dict(method=dict(method="dgl_hpff", k=12, pff=dict(n=2, variant="paper")))
