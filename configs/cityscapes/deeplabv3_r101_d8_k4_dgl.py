# DeepLabV3-R101-D8 on Cityscapes, DGL K=4 with DGLSegHead (FCNHead-shaped) on modules 0-2.
# The e2e config's model, data and 40k schedule; only the training method differs.
_base_ = ["./deeplabv3_r101_d8_e2e.py"]
model = dict(method=dict(_delete_=True, method="dgl", k=4))
