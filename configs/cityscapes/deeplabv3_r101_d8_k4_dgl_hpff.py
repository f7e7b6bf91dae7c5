# DeepLabV3-R101-D8 on Cityscapes, DGL+HPFF K=4: DGLSegHead on both levels, PFF 2x2.
# The e2e config's model, data and 40k schedule; only the training method differs.
_base_ = ["./deeplabv3_r101_d8_e2e.py"]
model = dict(method=dict(_delete_=True, method="dgl_hpff", k=4))
