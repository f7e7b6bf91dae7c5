"""Training machinery around mmengine; importing this registers our hooks/metrics/strategies."""

from hpff_dist.engine import hooks, metrics  # noqa: F401
