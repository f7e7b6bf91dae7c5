# DeepLabV3-R101-D8 on Cityscapes, InfoPro K=4, dense InfoPro heads on modules 0-2 (reconstruction 1.5 + segmentation 1).
# Paper (supp. Table 4, SS / MS / MS+flip mIoU): 78.25 / 79.14 / 79.28.
# The e2e config's model, data and 40k schedule; only the training method differs.
_base_ = ["./deeplabv3_r101_d8_e2e.py"]
model = dict(method=dict(_delete_=True, method="infopro", k=4))
