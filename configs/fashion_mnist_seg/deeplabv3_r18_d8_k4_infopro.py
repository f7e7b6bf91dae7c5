# DeepLabV3-R18-D8 on the Fashion-MNIST segmentation canvases, InfoPro K=4: dense InfoPro heads
# (reconstruction 1.5 + segmentation 1) on modules 0-2 of a balanced split (2 blocks each).
# The e2e config's model, data and schedule; only the training method differs.
_base_ = ["./deeplabv3_r18_d8_e2e.py"]
model = dict(method=dict(_delete_=True, method="infopro", k=4))
