# ResNet-32 DGL+HPFF K=16 on Fashion-MNIST (1-channel stem): the `make train` job.
# HiLo (independent + cascade levels, w_ind 0.001 / w_cas 0.999) with PFF n=2, as the paper's
# DGL+HPFF, but with light 0c2f aux heads (pool + 2 FC) so two epochs fit the 15-minute CPU
# budget; the paper's 2c2f heads are `model.method.aux_net=2c2f`.
_base_ = ["./resnet32_e2e.py"]
model = dict(method=dict(method="dgl_hpff", k=16, aux_net="0c2f"))
