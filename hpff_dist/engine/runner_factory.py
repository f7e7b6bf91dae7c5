"""One place that turns a config into the right mmengine runner.

* ``launcher='none'`` and no ``strategy``: mmengine's ``Runner`` (one process).
* a ``strategy`` in the config, or any distributed launcher: ``FlexibleRunner`` with
  ``LocalDeepSpeedStrategy`` (ZeRO stage 0 unless the config says otherwise). We do not use
  DDP for local learning: DDP reduces gradients inside each backward, which is wrong or wasteful
  with several backward calls per step; our strategy reduces once per optimizer step.
* epoch-based ``train_cfg`` gets ``ResumableEpochBasedTrainLoop`` (mid-epoch resume at the
  right batch) in both cases.
"""

from __future__ import annotations

from typing import Any

from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.runner import FlexibleRunner, Runner

from hpff_dist.data.loader_builder import materialize_dataloaders
from hpff_dist.engine.cpu_malloc import configure_cpu_malloc
from hpff_dist.engine.deepspeed_strategy import per_device_batch
from hpff_dist.engine.launchers import dist_env

# Scoped names resolve from mmengine's root registries before our default scope is set
# (FlexibleRunner builds its strategy first) and keep the config dumpable as text.
DEEPSPEED_STRATEGY = "hpff_dist.LocalDeepSpeedStrategy"
RESUMABLE_EPOCH_LOOP = "hpff_dist.ResumableEpochBasedTrainLoop"
_OUR_STRATEGY_NAMES = {"LocalDeepSpeedStrategy", DEEPSPEED_STRATEGY}


def _strategy_name(strategy: dict) -> str:
    kind = strategy.get("type", "")
    return kind if isinstance(kind, str) else kind.__name__


def prepare_config(cfg: Config) -> Config:
    """The config :func:`build_runner` builds from (a copy; ``cfg`` is left alone)."""
    cfg = cfg.copy()
    launcher = cfg.get("launcher") or "none"
    env = dist_env(launcher)  # refuses launcher 'none' under torchrun
    cfg.launcher = launcher

    train_cfg = cfg.get("train_cfg")
    if train_cfg is not None and train_cfg.get("by_epoch", False) and "type" not in train_cfg:
        train_cfg = dict(train_cfg)
        train_cfg.pop("by_epoch")
        train_cfg["type"] = RESUMABLE_EPOCH_LOOP
        cfg.train_cfg = train_cfg

    strategy = cfg.get("strategy")
    if strategy is None and launcher == "none":
        return cfg
    strategy = dict(strategy or {})
    strategy.setdefault("type", DEEPSPEED_STRATEGY)  # e.g. only `--cfg-options strategy.bf16...`
    name = _strategy_name(strategy)
    if name == "LocalDeepSpeedStrategy":
        strategy["type"] = DEEPSPEED_STRATEGY
    elif name in ("DeepSpeedStrategy", "DDPStrategy"):
        raise ValueError(
            f"strategy {name} makes one gradient reduction per backward call, which is wrong "
            "(ZeRO) or wasteful (DDP) for local learning's several backward calls per step; use "
            "strategy=dict(type='LocalDeepSpeedStrategy', zero_optimization=dict(stage=0|1|2))"
        )
    if _strategy_name(strategy) in _OUR_STRATEGY_NAMES:
        _derive_per_device_batch(cfg, strategy, env.world_size)
    cfg.strategy = strategy
    return cfg


def _derive_per_device_batch(cfg: Config, strategy: dict[str, Any], world_size: int) -> None:
    """``strategy.global_batch_size`` sets ``train_dataloader.batch_size`` to global / (world x
    accumulation), or raises ``BatchConfigError`` naming the numbers when that does not divide;
    the strategy re-checks every stated number once the process group exists."""
    global_batch = strategy.get("global_batch_size")
    loader = cfg.get("train_dataloader")
    if global_batch is None or loader is None:
        return
    accumulation = int(strategy.get("gradient_accumulation_steps") or 1)
    per_device = per_device_batch(int(global_batch), world_size, accumulation)
    loader.batch_size = per_device
    print_log(
        f"per-device batch {per_device} = global_batch_size {global_batch} / (world size "
        f"{world_size} x accumulation steps {accumulation})",
        logger="current",
    )


def build_runner(cfg: Config) -> Runner | FlexibleRunner:
    """A ``Runner`` (one process, no strategy) or a ``FlexibleRunner`` with our DeepSpeed
    strategy (any distributed launcher, or a ``strategy`` key). ``cfg.launcher`` is one of
    ``none``, ``pytorch``, ``slurm``; ``cfg.resume=True`` with ``load_from=None`` resumes from
    the latest checkpoint in ``work_dir``."""
    configure_cpu_malloc(cfg.get("cpu_malloc"))
    materialize_dataloaders(cfg)  # loaders that are not torch Datasets (DALI) become objects
    cfg = prepare_config(cfg)
    if cfg.get("strategy") is None:
        return Runner.from_cfg(cfg)
    return FlexibleRunner.from_cfg(cfg)
