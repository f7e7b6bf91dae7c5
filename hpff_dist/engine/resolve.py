"""The user's config -> the config a run is built from, with every change on record.

A run does not train on the config file as written: the dataset's normalisation moves into the
model, epoch and iteration loops become resumable, a distributed launcher gets our DeepSpeed
strategy, a global batch size sets the per-device batch, and a DeepSpeed run gets our optim
wrapper. :func:`resolve_config` makes all of these on a deep copy and returns them as
:class:`~hpff_dist.engine.changes.ConfigChange` records (key, old value, new value, why);
``build_runner`` writes the result to the work dir (``resolved_config.py``,
``config_changes.json``) and logs every change. What only the DeepSpeed strategy can decide
once the process group exists (DeepSpeed's batch keys, clipping, buffer dtype) it reports the
same way (``hpff_dist.engine.deepspeed.strategy``). The resolved config's hook, loop, optimizer,
scheduler, loader and dataset arguments are checked against their signatures
(:mod:`hpff_dist.engine.signatures`) before anything is built.
"""

from __future__ import annotations

import copy
import os
import os.path as osp
from collections.abc import Mapping
from typing import Any

from mmengine.config import Config

from hpff_dist.engine.batch import per_device_batch
from hpff_dist.engine.changes import UNSET, ChangeRecorder, ConfigChange, write_changes
from hpff_dist.engine.deepspeed.policy import DEEPSPEED_OPTIM_WRAPPER, check_optim_wrapper_type
from hpff_dist.engine.launchers import DistEnv, dist_env
from hpff_dist.engine.signatures import check_arguments

__all__ = [
    "DEEPSPEED_STRATEGY",
    "RESOLVED_CONFIG_FILE",
    "RESUMABLE_EPOCH_LOOP",
    "RESUMABLE_ITER_LOOP",
    "resolve_config",
    "write_resolved_config",
]

# Scoped names resolve from mmengine's root registries before our default scope is set
# (FlexibleRunner builds its strategy first) and keep the config dumpable as text.
DEEPSPEED_STRATEGY = "hpff_dist.LocalDeepSpeedStrategy"
PIPELINE_STRATEGY = "hpff_dist.LocalPipelineStrategy"
RESUMABLE_EPOCH_LOOP = "hpff_dist.ResumableEpochBasedTrainLoop"
RESUMABLE_ITER_LOOP = "hpff_dist.ResumableIterBasedTrainLoop"
#: how a config names mmengine's iteration loop (our LOOPS registry finds it through its parent)
_MMENGINE_ITER_LOOP_NAMES = {"IterBasedTrainLoop", "mmengine.IterBasedTrainLoop"}
_OUR_STRATEGY_NAMES = {
    "LocalDeepSpeedStrategy",
    DEEPSPEED_STRATEGY,
    "LocalPipelineStrategy",
    PIPELINE_STRATEGY,
}
#: samplers of ours and mmengine's and their split-by-replica twins (a pipelined run)
_REPLICA_SAMPLERS = {
    "DefaultSampler": "hpff_dist.ReplicaDefaultSampler",
    "SeededSampler": "hpff_dist.ReplicaSeededSampler",
}
#: samplers that split by replica themselves given ``stages``
_SAMPLERS_WITH_STAGES = {"ShardAwareDistributedSampler"}
_PIPELINE_LOOPS = {"val_cfg": "hpff_dist.PipelineValLoop", "test_cfg": "hpff_dist.PipelineTestLoop"}
#: the resolved config, as mmengine's ``Config.dump`` writes it, in the work dir.
RESOLVED_CONFIG_FILE = "resolved_config.py"


def resolve_config(cfg: Config, env: DistEnv | None = None) -> tuple[Config, list[ConfigChange]]:
    """The run config for ``cfg`` (a deep copy: ``cfg`` is left as it was) and the changes made
    to it, in order. ``env`` is where this process sits (``dist_env`` of the config's launcher,
    computed when not given); resolving a resolved config changes nothing more."""
    run = copy.deepcopy(cfg)
    recorder = ChangeRecorder()
    launcher = run.get("launcher") or "none"
    env = env or dist_env(launcher)  # refuses launcher 'none' under torchrun
    recorder.set(run, "launcher", launcher, "no launcher given: one process", "launcher")
    _model_owns_normalisation(run, recorder)
    _sync_bn_only_on_gpus(run, recorder)
    _resumable_epoch_loop(run, recorder)
    _resumable_iter_loop(run, recorder)
    strategy = _strategy(run, launcher, recorder)
    replicas = env.world_size
    if strategy is not None and strategy.get("pipeline") is not None:
        replicas = _pipeline(run, strategy, env, recorder)
    if strategy is not None and _strategy_name(strategy) in _OUR_STRATEGY_NAMES:
        _per_device_batch(run, strategy, replicas, recorder)
        _deepspeed_optim_wrapper(run, recorder)
    check_arguments(run)  # a misspelt argument fails here, not when its object is built
    return run, recorder.changes


def write_resolved_config(cfg: Config, changes: list[ConfigChange], rank: int = 0) -> str | None:
    """Write ``resolved_config.py`` and ``config_changes.json`` to ``cfg.work_dir`` (rank 0
    only); returns the config's path, or ``None`` where nothing was written."""
    work_dir = cfg.get("work_dir")
    if rank != 0 or not work_dir:
        return None
    os.makedirs(work_dir, exist_ok=True)
    path = osp.join(work_dir, RESOLVED_CONFIG_FILE)
    cfg.dump(path)
    write_changes(changes, work_dir)  # a fresh file: this run's changes only
    return path


def _strategy_name(strategy: Mapping[str, Any]) -> str:
    kind = strategy.get("type", "")
    return kind if isinstance(kind, str) else kind.__name__


def _model_owns_normalisation(run: Config, recorder: ChangeRecorder) -> None:
    """Dataset configs carry their normalisation (top-level ``data_preprocessor``); the model
    applies it at run time, so its own keys win over the dataset's."""
    if run.get("data_preprocessor") is None or "model" not in run:
        return
    merged = dict(run.data_preprocessor)
    merged.update(run.model.get("data_preprocessor") or {})
    recorder.set(
        run.model,
        "data_preprocessor",
        merged,
        "the dataset's normalisation (top-level data_preprocessor) is applied by the model; "
        "the model's own keys win",
        "model.data_preprocessor",
    )


def _sync_bn_only_on_gpus(run: Config, recorder: ChangeRecorder) -> None:
    """mmseg's configs normalise with ``SyncBN``, which synchronises over CUDA devices only (a
    multi-process CPU run fails in its first forward): without a GPU every ``norm_cfg`` of the
    model that says ``SyncBN`` becomes ``BN`` (one process: the same arithmetic)."""
    import torch

    if torch.cuda.is_available() or "model" not in run:
        return
    why = "SyncBN synchronises CUDA devices only; no GPU here, so per-process BN"

    def walk(node: Any, path: str) -> None:
        if isinstance(node, Mapping):
            if node.get("type") in ("SyncBN", "MMSyncBN", "nn.SyncBatchNorm"):
                recorder.set(node, "type", "BN", why, f"{path}.type")
            for key, value in node.items():
                walk(value, f"{path}.{key}")
        elif isinstance(node, (list, tuple)):
            for index, value in enumerate(node):
                walk(value, f"{path}.{index}")

    walk(run.model, "model")


def _resumable_epoch_loop(run: Config, recorder: ChangeRecorder) -> None:
    train_cfg = run.get("train_cfg")
    if train_cfg is None or not train_cfg.get("by_epoch", False) or "type" in train_cfg:
        return
    why = (
        "mmengine's epoch loop replays an interrupted epoch from its first batch; "
        "ResumableEpochBasedTrainLoop resumes at the batch it stopped"
    )
    recorder.pop(train_cfg, "by_epoch", why, "train_cfg.by_epoch")
    recorder.set(train_cfg, "type", RESUMABLE_EPOCH_LOOP, why, "train_cfg.type")


def _resumable_iter_loop(run: Config, recorder: ChangeRecorder) -> None:
    """mmengine's ``IterBasedTrainLoop`` (by type, or ``by_epoch=False`` without one) resumes by
    loading and dropping every trained batch, hours for mmseg's 40k iterations:
    ``ResumableIterBasedTrainLoop`` starts the sampler at the next batch instead. A loop of
    another type (a subclass, a custom loop) is the user's and stays."""
    train_cfg = run.get("train_cfg")
    if not isinstance(train_cfg, Mapping):
        return
    why = (
        "mmengine's iteration loop resumes by loading and dropping every trained batch, and "
        "with other dropout draws; ResumableIterBasedTrainLoop starts at the next batch without "
        "loading the trained ones and seeds each iteration by (seed, iteration, rank)"
    )
    if "type" in train_cfg:
        if _is_mmengine_iter_loop(train_cfg["type"]):
            recorder.set(train_cfg, "type", RESUMABLE_ITER_LOOP, why, "train_cfg.type")
    elif "by_epoch" in train_cfg and not train_cfg["by_epoch"]:
        recorder.pop(train_cfg, "by_epoch", why, "train_cfg.by_epoch")
        recorder.set(train_cfg, "type", RESUMABLE_ITER_LOOP, why, "train_cfg.type")


def _is_mmengine_iter_loop(kind: Any) -> bool:
    """Whether a loop ``type`` (a name or a class) is mmengine's ``IterBasedTrainLoop`` itself."""
    if isinstance(kind, str):
        return kind in _MMENGINE_ITER_LOOP_NAMES
    named = getattr(kind, "__name__", None) == "IterBasedTrainLoop"
    return named and str(getattr(kind, "__module__", "")).startswith("mmengine.")


def _strategy(run: Config, launcher: str, recorder: ChangeRecorder) -> Mapping | None:
    """The run's strategy: none for one process without one, else ours unless named."""
    strategy = run.get("strategy")
    if strategy is None and launcher == "none":
        return None
    why = (
        "local learning makes several backward calls per step; LocalDeepSpeedStrategy "
        "reduces gradients once per step (ZeRO stage 0 unless the config says otherwise)"
    )
    if strategy is None:
        recorder.set(run, "strategy", dict(type=DEEPSPEED_STRATEGY), why, "strategy")
        return run.strategy
    if "type" not in strategy:  # e.g. only `--cfg-options strategy.bf16.enabled=True`
        recorder.set(strategy, "type", DEEPSPEED_STRATEGY, why, "strategy.type")
    name = _strategy_name(strategy)
    if name == "LocalDeepSpeedStrategy":
        recorder.set(
            strategy,
            "type",
            DEEPSPEED_STRATEGY,
            "FlexibleRunner builds its strategy before our default scope is set",
            "strategy.type",
        )
    elif name in ("DeepSpeedStrategy", "DDPStrategy"):
        raise ValueError(
            f"strategy {name} makes one gradient reduction per backward call, which is wrong "
            "(ZeRO) or wasteful (DDP) for local learning's several backward calls per step; use "
            "strategy=dict(type='LocalDeepSpeedStrategy', zero_optimization=dict(stage=0|1|2))"
        )
    return strategy


def _pipeline(run: Config, strategy: Any, env: DistEnv, recorder: ChangeRecorder) -> int:
    """``strategy.pipeline``: our pipeline strategy, loaders split by replica, evaluation
    loops that count each replica's results once. Returns the number of replicas D."""
    pipeline = strategy["pipeline"]
    stages = int(pipeline.get("stages", 1)) if isinstance(pipeline, Mapping) else 0
    if stages < 1:
        raise ValueError(f"strategy.pipeline must be dict(stages=P>=1, ...), got {pipeline!r}")
    if stages > 1 and not env.distributed:
        raise ValueError(
            f"strategy.pipeline.stages={stages} runs one stage per process: start "
            f"{stages} x D processes, e.g. torchrun --nproc_per_node {stages} tools/train.py "
            "CONFIG --launcher pytorch"
        )
    if env.world_size % stages:
        raise ValueError(
            f"strategy.pipeline.stages={stages} must divide the {env.world_size} processes "
            f"(P stages x D replicas): start a multiple of {stages} processes"
        )
    if _strategy_name(strategy) in ("LocalDeepSpeedStrategy", DEEPSPEED_STRATEGY):
        recorder.set(
            strategy,
            "type",
            PIPELINE_STRATEGY,
            "strategy.pipeline given: LocalPipelineStrategy runs the local modules as stages "
            "on separate processes, DeepSpeed over each stage's replicas",
            "strategy.type",
        )
    why = (
        f"the {stages} stages of a replica train on the same batch: the data is split by "
        "replica (rank // stages), not by rank"
    )
    for key in ("train_dataloader", "val_dataloader", "test_dataloader"):
        loader = run.get(key)
        if not isinstance(loader, Mapping) or not isinstance(loader.get("sampler"), Mapping):
            if loader is not None and stages > 1:
                raise ValueError(
                    f"{key}: a pipelined run needs a sampler config (DefaultSampler or "
                    f"SeededSampler) it can split by replica, got {type(loader).__name__}"
                )
            continue
        sampler = loader["sampler"]
        kind = str(sampler.get("type", "")).rsplit(".", 1)[-1]
        if kind.startswith("Replica"):
            continue
        if kind in _SAMPLERS_WITH_STAGES:
            recorder.set(sampler, "stages", stages, why, f"{key}.sampler.stages")
            continue
        if key == "train_dataloader" and kind == "DefaultSampler" and stages > 1:
            raise ValueError(
                "train_dataloader.sampler.type='DefaultSampler': in a pipelined run the stages "
                "of a replica must see the same augmentations of the same samples, which "
                "DefaultSampler's per-worker random state does not give; use "
                "dict(type='SeededSampler') (per-sample seeds: hpff_dist.data.sample_seeds)"
            )
        if kind not in _REPLICA_SAMPLERS:
            raise ValueError(
                f"{key}.sampler.type={sampler.get('type')!r} cannot be split by pipeline "
                "replica; a pipelined run supports "
                f"{sorted(_REPLICA_SAMPLERS) + sorted(_SAMPLERS_WITH_STAGES)}"
            )
        recorder.set(sampler, "type", _REPLICA_SAMPLERS[kind], why, f"{key}.sampler.type")
        recorder.set(sampler, "stages", stages, why, f"{key}.sampler.stages")
    loop_why = (
        f"every one of the {stages} stages holds the replica's predictions: the metric "
        f"collects {stages} x the dataset size"
    )
    for key, loop in _PIPELINE_LOOPS.items():
        cfg = run.get(key)
        if not isinstance(cfg, Mapping):
            continue
        kind = str(cfg.get("type", "ValLoop" if key == "val_cfg" else "TestLoop"))
        if kind.rsplit(".", 1)[-1] not in ("ValLoop", "TestLoop"):
            if not kind.rsplit(".", 1)[-1].startswith("Pipeline"):
                raise ValueError(f"{key}.type={kind!r}: a pipelined run evaluates with {loop}")
            continue
        recorder.set(cfg, "type", loop, loop_why, f"{key}.type")
        recorder.set(cfg, "stages", stages, loop_why, f"{key}.stages")
    return env.world_size // stages


def _per_device_batch(
    run: Config, strategy: Mapping[str, Any], world_size: int, recorder: ChangeRecorder
) -> None:
    """``strategy.global_batch_size`` sets ``train_dataloader.batch_size`` to global / (world x
    accumulation) (world: the data-parallel replicas; a pipeline's stages share a batch), or raises ``BatchConfigError`` naming the numbers when that does not divide;
    the strategy re-checks every stated number once the process group exists."""
    global_batch = strategy.get("global_batch_size")
    loader = run.get("train_dataloader")
    if global_batch is None or loader is None:
        return
    accumulation = int(strategy.get("gradient_accumulation_steps") or 1)
    per_device = per_device_batch(int(global_batch), world_size, accumulation)
    why = (
        f"per-device batch {per_device} = global_batch_size {global_batch} / (world size "
        f"{world_size} x accumulation steps {accumulation})"
    )
    if isinstance(loader, Mapping):
        recorder.set(loader, "batch_size", per_device, why, "train_dataloader.batch_size")
    else:  # a loader object (materialized DALI loader)
        old = getattr(loader, "batch_size", UNSET)
        if old != per_device:
            loader.batch_size = per_device
            recorder.note("train_dataloader.batch_size", old, per_device, why)


def _deepspeed_optim_wrapper(run: Config, recorder: ChangeRecorder) -> None:
    """Under DeepSpeed the engine steps the optimizer: the wrapper is ours whatever the
    (single-process) config names; a wrapper that cannot drive an engine is refused here."""
    optim_wrapper = run.get("optim_wrapper")
    if not isinstance(optim_wrapper, Mapping):
        return
    kind = optim_wrapper.get("type", "OptimWrapper")
    check_optim_wrapper_type(kind)
    recorder.set(
        optim_wrapper,
        "type",
        DEEPSPEED_OPTIM_WRAPPER,
        "the DeepSpeed engine steps the optimizer; LocalDeepSpeedOptimWrapper makes one step "
        "of several backward calls (clip_grad and accumulative_counts move into DeepSpeed's "
        "config when the strategy builds it)",
        "optim_wrapper.type",
    )
