"""Training machinery around mmengine; importing this registers our hooks, metrics and loop.

One job per module: ``config`` (read a file, check keys), ``resolve`` (the run config and its
``changes``), ``runner_factory`` (``build_runner``), ``launchers``, ``batch`` (batch
arithmetic), ``checkpoint`` (BatchNorm sync and checkpoint checks), ``deepspeed/`` (policy,
wrappers, strategy). The DeepSpeed modules are imported when a config asks for them (the
registries list them in ``locations``), and DeepSpeed itself only when its strategy is built.
"""

from hpff_dist.engine import (  # noqa: F401
    cross_dataset,
    hooks,
    local_curves,
    metrics,
    pipeline,
    preemption,
    resumable_loop,
)
