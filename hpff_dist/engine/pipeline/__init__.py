"""Pipelined local learning in the engine: the process grid (``grid``), the strategy that cuts
the model into stages and runs DeepSpeed per stage (``strategy``, imported when a config asks
for it), and the evaluation loops whose results every stage holds (``loops``)."""

from hpff_dist.engine.pipeline import loops  # noqa: F401  (registers the loops)
