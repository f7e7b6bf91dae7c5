"""Training machinery around mmengine; importing this registers our hooks/metrics/strategies."""

from hpff_dist.engine import deepspeed_strategy, hooks, metrics, resumable_loop  # noqa: F401
