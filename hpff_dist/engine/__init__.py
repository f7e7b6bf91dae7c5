"""Training machinery around mmengine; importing this registers our hooks, metrics and loop.

The DeepSpeed strategy lives in ``deepspeed_strategy`` and is imported only when a config asks
for it (the registries list it in ``locations``): importing DeepSpeed costs seconds.
"""

from hpff_dist.engine import hooks, metrics, resumable_loop  # noqa: F401
