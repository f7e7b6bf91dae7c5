# mmseg's 40k-iteration schedule (schedule_40k.py): SGD lr 0.01, momentum 0.9, weight decay
# 5e-4, poly decay (power 0.9) to 1e-4 over 40k iterations, validation and checkpoints every
# 4k iterations. The loop is iteration-based; its batches come from the SeededSampler cycled
# epoch after epoch, so a resumed run continues at the exact batch.
_base_ = ["../default_runtime.py"]
max_iters = 40000
checkpoint_interval = 4000  # also the validation interval
optim_wrapper = dict(
    type="OptimWrapper",
    optimizer=dict(type="SGD", lr=0.01, momentum=0.9, weight_decay=0.0005),
    clip_grad=None,
)
param_scheduler = [
    dict(type="PolyLR", eta_min=1e-4, power=0.9, begin=0, end=max_iters, by_epoch=False)
]
train_cfg = dict(type="IterBasedTrainLoop", max_iters=max_iters, val_interval=checkpoint_interval)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")
# The runtime comes with the schedule: default_runtime.py with iteration-based logging and
# checkpoints (every `checkpoint_interval`), since two bases may not both set default_hooks.
# Experiments list this base instead of default_runtime.py.
default_hooks = dict(
    logger=dict(type="LoggerHook", interval=50, log_metric_by_epoch=False),
    checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=checkpoint_interval, max_keep_ckpts=3),
)
log_processor = dict(by_epoch=False)
