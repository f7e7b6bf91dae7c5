# DeepLabV3-R101-D8 on Cityscapes, InfoPro K=2 (InfoPro's own Cityscapes setting; balanced split, module 0 = blocks up to (3, 8)).
# InfoPro's code (SS / MS / MS+flip mIoU): 79.37 / 80.53 / 80.54.
# The e2e config's model, data and 40k schedule; only the training method differs.
_base_ = ["./deeplabv3_r101_d8_e2e.py"]
model = dict(method=dict(_delete_=True, method="infopro", k=2))
