# DeepLabV3-R18-D8 on the Fashion-MNIST segmentation canvases, InfoPro+HPFF K=4 (the
# `make train-seg` job): independent DGLSegHead (0.001) + cascade InfoProSegHead (0.999), PFF
# 2x2, on a balanced split (2 blocks per module).
# The e2e config's model, data and schedule; only the training method differs.
_base_ = ["./deeplabv3_r18_d8_e2e.py"]
model = dict(method=dict(_delete_=True, method="infopro_hpff", k=4))
