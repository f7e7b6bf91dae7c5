"""One place that turns a config into the right mmengine runner.

* ``launcher='none'`` and no ``strategy``: mmengine's ``Runner`` (one process).
* a ``strategy`` in the config, or any distributed launcher: ``FlexibleRunner`` with
  ``LocalDeepSpeedStrategy`` (ZeRO stage 0 unless the config says otherwise). We do not use
  DDP for local learning: DDP reduces gradients inside each backward, which is wrong or wasteful
  with several backward calls per step; our strategy reduces once per optimizer step.

The runner is built from :func:`~hpff_dist.engine.resolve.resolve_config`'s copy of the config;
what it changed is written to the work dir and logged. DeepSpeed is imported only when the
strategy is built.
"""

from __future__ import annotations

from mmengine.config import Config

from hpff_dist import compat
from hpff_dist.data.loader_builder import materialize_dataloaders
from hpff_dist.engine.changes import log_changes
from hpff_dist.engine.cpu_malloc import configure_cpu_malloc
from hpff_dist.engine.launchers import dist_env
from hpff_dist.engine.mmengine_runner import FlexibleRunner, Runner
from hpff_dist.engine.resolve import resolve_config, write_resolved_config

__all__ = ["build_runner"]


def build_runner(cfg: Config) -> Runner | FlexibleRunner:
    """A ``Runner`` (one process, no strategy) or a ``FlexibleRunner`` with our DeepSpeed
    strategy (any distributed launcher, or a ``strategy`` key). ``cfg.launcher`` is one of
    ``none``, ``pytorch``, ``slurm``; ``cfg.resume=True`` with ``load_from=None`` resumes from
    the latest checkpoint in ``work_dir``. ``cfg`` itself is not modified."""
    compat.apply_all()
    env = dist_env(cfg.get("launcher") or "none")  # refuses launcher 'none' under torchrun
    cfg, changes = resolve_config(cfg, env)
    write_resolved_config(cfg, changes, env.rank)
    configure_cpu_malloc(cfg.get("cpu_malloc"))
    materialize_dataloaders(cfg)  # loaders that are not torch Datasets (DALI) become objects
    if cfg.get("strategy") is None:
        runner = Runner.from_cfg(cfg)
    else:
        runner = FlexibleRunner.from_cfg(cfg)
    log_changes(changes)  # now the run's logger exists: the lines reach its log file
    return runner
