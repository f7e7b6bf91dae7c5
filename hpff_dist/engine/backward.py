"""Moved to ``hpff_dist.models.local_step`` (kept until the DeepSpeed strategy's import moves)."""

from hpff_dist.models.local_step import LossBackward, loss_backward  # noqa: F401
