# DeepLabV3-R101-D8 on Cityscapes, InfoPro+HPFF K=2 (balanced split). NB: module 0 learns only through cascade 1.
# The e2e config's model, data and 40k schedule; only the training method differs.
_base_ = ["./deeplabv3_r101_d8_e2e.py"]
model = dict(method=dict(_delete_=True, method="infopro_hpff", k=2))
