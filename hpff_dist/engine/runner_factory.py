"""One place that turns a config into the right mmengine runner."""

from __future__ import annotations

from mmengine.config import Config
from mmengine.runner import Runner


def build_runner(cfg: Config) -> Runner:
    """A plain mmengine ``Runner`` (single process or torchrun)."""
    return Runner.from_cfg(cfg)
