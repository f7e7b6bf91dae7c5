# ViT on CIFAR-10 (the paper's supplementary Table 2): 200 epochs at batch 1024, AdamW
# (lr 1e-3 = DeiT's 5e-4 per 512 images, betas 0.9/0.999, weight decay 0.05, none on norms,
# biases, class token and position embedding), 10-epoch linear warm-up then cosine to 1e-5,
# gradient clipping at norm 1: once per step by the global norm over every module's gradients
# (mmengine's OptimWrapper), so a module with a large gradient scales all modules' updates
# alike; what each gradient holds stays local.
max_epochs = 200
optim_wrapper = dict(
    type="OptimWrapper",
    optimizer=dict(type="AdamW", lr=1e-3, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(
        norm_decay_mult=0.0,
        bias_decay_mult=0.0,
        custom_keys={".class_token": dict(decay_mult=0.0), ".pos_embedding": dict(decay_mult=0.0)},
    ),
    clip_grad=dict(max_norm=1.0),
)
param_scheduler = [
    dict(
        type="LinearLR",
        start_factor=0.01,
        by_epoch=True,
        begin=0,
        end=10,
        convert_to_iter_based=True,
    ),
    dict(
        type="CosineAnnealingLR",
        by_epoch=True,
        begin=10,
        end=max_epochs,
        T_max=max_epochs - 10,
        eta_min=1e-5,
        convert_to_iter_based=True,
    ),
]
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=10)
val_cfg = dict()
test_cfg = dict()
auto_scale_lr = dict(base_batch_size=1024, enable=False)
