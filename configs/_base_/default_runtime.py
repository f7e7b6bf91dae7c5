# Runtime defaults shared by every experiment.
default_scope = "hpff_dist"

default_hooks = dict(
    timer=dict(type="IterTimerHook"),
    logger=dict(type="LoggerHook", interval=50),
    param_scheduler=dict(type="ParamSchedulerHook"),
    checkpoint=dict(type="CheckpointHook", interval=1, max_keep_ckpts=3, save_last=True),
    sampler_seed=dict(type="DistSamplerSeedHook"),
)
# LocalLossCurvesHook: per-module local losses + val metrics -> TensorBoard, local_curves.png
# PreemptionHook: on SIGUSR1/SIGTERM (SLURM time limit, preemption, requeue) checkpoint after
# the current iteration and exit 75; the sbatch scripts requeue, --resume auto continues there
custom_hooks = [
    dict(type="ThroughputHook"),
    dict(type="LocalLossCurvesHook", interval=25),
    dict(type="PreemptionHook"),
]
# Every run logs to TensorBoard (`tensorboard --logdir WORK_DIR`) and to scalars.json.
visualizer = dict(
    type="Visualizer",
    vis_backends=[dict(type="LocalVisBackend"), dict(type="TensorboardVisBackend")],
)

env_cfg = dict(
    cudnn_benchmark=True,
    mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
    dist_cfg=dict(backend="nccl"),  # gloo is chosen automatically on CPU-only hosts
)
# glibc malloc keeps freed activation memory (hpff_dist/engine/cpu_malloc.py); None: defaults
cpu_malloc = dict(trim_threshold_mb=1024, mmap_threshold_mb=32)
log_processor = dict(window_size=20, by_epoch=True)
log_level = "INFO"
load_from = None
resume = False
randomness = dict(seed=0, deterministic=False)
