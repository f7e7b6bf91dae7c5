# Paper schedule for ImageNet: 90 epochs, SGD Nesterov (momentum 0.9), weight decay 1e-4, cosine
# to 0, lr 0.05 per 128 images scaled linearly with the total batch.
# The scaling is mmengine's auto_scale_lr: lr = 0.05 * (world_size * train_dataloader.batch_size)
# / 128, applied once before the schedulers are built (e.g. 8 GPUs x 64 = 512 images -> 0.2).
# It does not count gradient accumulation: with strategy.gradient_accumulation_steps=A, set
# auto_scale_lr.base_batch_size=128 // A (or the lr) yourself.
# The reference steps the cosine once per epoch; here it is iteration-based (same curve, smooth).
max_epochs = 90
optim_wrapper = dict(
    type="OptimWrapper",
    optimizer=dict(type="SGD", lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4),
)
param_scheduler = [
    dict(
        type="CosineAnnealingLR",
        by_epoch=True,
        begin=0,
        end=max_epochs,
        T_max=max_epochs,
        convert_to_iter_based=True,
    ),
]
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=1)
val_cfg = dict()
test_cfg = dict()
auto_scale_lr = dict(base_batch_size=128, enable=True)
