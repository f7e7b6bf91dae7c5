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

import os.path as osp

from mmengine.config import Config

from hpff_dist import compat
from hpff_dist.data.loader_builder import materialize_dataloaders
from hpff_dist.engine.changes import ChangeRecorder, ConfigChange, log_changes
from hpff_dist.engine.checkpoint_files import CheckpointError, checkpoint_meta
from hpff_dist.engine.cpu_malloc import configure_cpu_malloc
from hpff_dist.engine.launchers import dist_env
from hpff_dist.engine.resolve import resolve_config, write_resolved_config
from hpff_dist.engine.runners import AUTO_RESUME, LocalFlexibleRunner, LocalRunner, resume_target

__all__ = ["build_runner"]


def build_runner(cfg: Config) -> LocalRunner | LocalFlexibleRunner:
    """A ``Runner`` (one process, no strategy) or a ``FlexibleRunner`` with our DeepSpeed
    strategy (any distributed launcher, or a ``strategy`` key), both with the checkpoint policy
    of :mod:`hpff_dist.engine.runners`. ``cfg.launcher`` is one of ``none``, ``pytorch``,
    ``slurm``; ``cfg.resume=True`` with ``load_from=None`` resumes from the newest intact
    checkpoint in ``work_dir`` (an error when there is none; ``resume='auto'`` starts fresh
    then), found here, before any data is read. ``cfg`` itself is not modified."""
    compat.apply_all()
    env = dist_env(cfg.get("launcher") or "none")  # refuses launcher 'none' under torchrun
    cfg, changes = resolve_config(cfg, env)
    changes += _resolve_resume(cfg)
    write_resolved_config(cfg, changes, env.rank)
    configure_cpu_malloc(cfg.get("cpu_malloc"))
    materialize_dataloaders(cfg)  # loaders that are not torch Datasets (DALI) become objects
    if cfg.get("strategy") is None:
        runner = LocalRunner.from_cfg(cfg)
    else:
        runner = LocalFlexibleRunner.from_cfg(cfg)
    log_changes(changes)  # now the run's logger exists: the lines reach its log file
    return runner


def _resolve_resume(cfg: Config) -> list[ConfigChange]:
    """``resume`` without a path -> the checkpoint it resumes (``load_from``), on record."""
    recorder = ChangeRecorder(by="resume")
    if cfg.get("resume") and cfg.get("load_from") is None:
        target = resume_target(cfg.resume, None, cfg.work_dir)
        if target is not None:
            why = "resume: the newest intact checkpoint of the work dir"
            recorder.set(cfg, "load_from", target, why, "load_from")
            recorder.set(cfg, "resume", True, why, "resume")
        else:
            why = f"resume={AUTO_RESUME!r} and no checkpoint in the work dir yet: start fresh"
            recorder.set(cfg, "resume", False, why, "resume")
    if cfg.get("resume") and cfg.get("load_from"):
        _resume_seed(cfg, cfg.load_from, recorder)
    if cfg.get("load_from"):
        _checkpoint_stages(cfg, cfg.load_from, recorder)
    return recorder.changes


def _checkpoint_stages(cfg: Config, checkpoint: str, recorder: ChangeRecorder) -> None:
    """A pipelined run loads (resumes, or starts from) a pipelined checkpoint with the stages
    it was written with: each stage file holds the modules of one stage, and a measured
    balance can differ between runs."""
    strategy = cfg.get("strategy") or {}
    pipeline = strategy.get("pipeline") if hasattr(strategy, "get") else None
    saved = checkpoint_meta(checkpoint).get("pipeline") if osp.isdir(checkpoint) else None
    stages = int(pipeline.get("stages", 1)) if pipeline else 1
    if saved is None and stages == 1:
        return
    if pipeline is None or saved is None or stages != saved["stages"]:
        raise CheckpointError(
            f"{checkpoint} was written by a run of "
            f"{saved['stages'] if saved else 1} pipeline stage(s), this config runs "
            f"{stages}; load it with the checkpoint's "
            "strategy.pipeline.stages, or convert it (tools/convert_checkpoint.py) and start "
            "from the .pth with load_from"
        )
    recorder.set(
        pipeline,
        "stage_modules",
        list(saved["stage_modules"]),
        "load_from/resume: the stages the checkpoint was written with",
        "strategy.pipeline.stage_modules",
    )


def _resume_seed(cfg: Config, checkpoint: str, recorder: ChangeRecorder) -> None:
    """``randomness.seed=None`` draws a new seed at every start, and the loaders (their order,
    their augmentation seeds) are built with it before mmengine restores the checkpoint's: a
    resumed run would see other batches. Take the checkpoint's seed instead, on record."""
    randomness = cfg.setdefault("randomness", {})
    if randomness.get("seed") is not None:
        return
    seed = checkpoint_meta(checkpoint).get("seed")
    if seed is not None:
        why = "resume: the seed the checkpoint's run drew, so the data order continues"
        recorder.set(randomness, "seed", int(seed), why, "randomness.seed")
