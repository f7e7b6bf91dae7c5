# Paper schedule for CIFAR-10/SVHN: 400 epochs, SGD Nesterov, lr 0.8 at batch 1024,
# weight decay 1e-4, 10-epoch linear warm-up then cosine.
optim_wrapper = dict(
    type="OptimWrapper",
    optimizer=dict(type="SGD", lr=0.8, momentum=0.9, nesterov=True, weight_decay=1e-4),
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
        end=400,
        T_max=390,
        convert_to_iter_based=True,
    ),
]
train_cfg = dict(by_epoch=True, max_epochs=400, val_interval=10)
val_cfg = dict()
test_cfg = dict()
auto_scale_lr = dict(base_batch_size=1024, enable=False)
