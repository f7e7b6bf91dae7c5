# DeepLabV3-R101-D8 on Cityscapes, InfoPro+HPFF K=4: independent DGLSegHead (0.001) + cascade InfoProSegHead (0.999), PFF 2x2.
# Paper (supp. Table 4, SS / MS / MS+flip mIoU): 80.04 / 80.62 / 81.13.
# The e2e config's model, data and 40k schedule; only the training method differs.
_base_ = ["./deeplabv3_r101_d8_e2e.py"]
model = dict(method=dict(_delete_=True, method="infopro_hpff", k=4))
