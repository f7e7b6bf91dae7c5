# ViT-B/16 end-to-end on CIFAR-10 upsampled to 224 (paper, supplementary Table 2: 88.99 %,
# 5.43 GB): 200 epochs, batch 1024, AdamW + warm-up + cosine, RandAugment, label smoothing 0.1.
_base_ = [
    "../_base_/models/vit_b16.py",
    "../_base_/datasets/cifar10_224.py",
    "../_base_/schedules/vit_cifar_200e.py",
    "../_base_/default_runtime.py",
]
model = dict(method=dict(method="e2e"), loss=dict(label_smoothing=0.1))
