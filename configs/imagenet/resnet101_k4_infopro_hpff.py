# ResNet-101, InfoPro+HPFF K=4 on ImageNet (reference split table resnet101 K=4), as the reference trains
# it on ImageNet: the InfoPro heads and lambdas of resnet101_k4_infopro.py (bottleneck classifier,
# progressive decoder, constant lambdas (5, 0.75)) at the cascade level only (independent level
# off, w_ind=0), cascade loss weight 1, module 0 (with the stem) learning through cascade 1, the
# last module through the net's own classifier on the cascade level; PFF n=2 (the paper's variant).
# Backend: DALI; for another, swap the datasets base of resnet101_k4_infopro.py.
_base_ = ["./resnet101_k4_infopro.py"]
model = dict(
    method=dict(
        method="infopro_hpff",
        w_ind=0.0,
        w_cas=1.0,
        first_module="cascade_only",
        last_module="cascade",
        pff=dict(n=2, variant="paper"),
    )
)
