"""Config arguments checked against the signatures they go to, before anything is built.

mmengine builds a hook, loop, optim wrapper, scheduler, loader or dataset from its dict only
when it needs the object, so a misspelt argument surfaces late: the train loop after the
datasets are read, and ``CheckpointHook`` (which keeps unknown keyword arguments for
``Runner.save_checkpoint``) at the first save, an epoch in. :func:`check_arguments` looks
every such dict's class up in our registries (which walk to mmengine's) and refuses any
argument no ``__init__`` takes, naming the full config key and the closest valid name.

A class whose ``__init__`` takes ``**kwargs`` is followed up its MRO while each ``__init__``
hands them on to ``super().__init__`` (mmengine's LR schedulers, ``AmpOptimWrapper``); where
the keyword arguments go anywhere else, the class is not checked. ``CheckpointHook`` is the
known exception: its extra arguments are checked against ``Runner.save_checkpoint``.
Types the registries do not know are left to mmengine, whose build names them.
"""

from __future__ import annotations

import ast
import difflib
import functools
import inspect
import textwrap
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from hpff_dist.data.loader_builder import LOADER_KEYS

__all__ = ["ConfigArgumentError", "accepted_arguments", "check_arguments"]

_KEYWORD = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
#: loader keys mmengine's ``Runner.build_dataloader`` takes out before calling ``DataLoader``.
_LOADER_OWN = frozenset(
    {"dataset", "sampler", "batch_sampler", "collate_fn", "worker_init_fn",
     "num_batch_per_epoch", "disable_subprocess_warning"}
)  # fmt: skip
#: optim wrapper keys ``build_optim_wrapper`` and its default constructor consume.
_OPTIM_WRAPPER_OWN = frozenset({"optimizer", "paramwise_cfg", "constructor"})
#: keys our DeepSpeed strategy moves from the optim wrapper into DeepSpeed's config
#: (``hpff_dist.engine.deepspeed.policy.translate_optim_wrapper``).
_MOVED_TO_DEEPSPEED = frozenset({"clip_grad", "accumulative_counts"})
#: what ``CheckpointHook`` passes to ``save_checkpoint`` itself besides its own arguments.
_CHECKPOINT_HOOK_SETS = frozenset({"out_dir", "filename", "meta"})


class ConfigArgumentError(TypeError):
    """Config arguments that no class or function they are passed to accepts."""


@dataclass(frozen=True)
class _Target:
    """One config dict built into a class: ``key`` (the config path), the dict, where its
    ``type`` is looked up, the type used when it names none, keys its builder consumes."""

    key: str
    args: Mapping[str, Any]
    registry: Any
    default_type: str | None = None
    consumed: frozenset[str] = field(default_factory=frozenset)


def _forwards_kwargs(function: Any, method: str) -> bool:
    """Whether ``function`` calls ``<something>.<method>(..., **kwargs)`` (e.g. super's)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    except (OSError, TypeError, SyntaxError):
        return False
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == method
            and any(kw.arg is None for kw in node.keywords)
        ):
            return True
    return False


@functools.cache
def accepted_arguments(cls: type, method: str = "__init__") -> frozenset[str] | None:
    """Keyword arguments ``cls.<method>`` accepts, following ``**kwargs`` up the MRO while
    each definition forwards them to the next; ``None`` when they go elsewhere (unknowable)."""
    names: set[str] = set()
    for klass in cls.__mro__:
        function = vars(klass).get(method)
        if function is None:
            continue
        if klass is object:  # object.__init__ takes nothing
            return frozenset(names)
        try:
            params = inspect.signature(function).parameters.values()
        except (TypeError, ValueError):
            return None
        names |= {p.name for p in params if p.kind in _KEYWORD and p.name != "self"}
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            return frozenset(names)
        if not _forwards_kwargs(function, method):
            return None
    return frozenset(names)


def _registries() -> dict[str, Any]:
    """Our registries, with the mmengine modules that fill their parents imported."""
    import mmengine.dataset  # noqa: F401  (samplers)
    import mmengine.hooks  # noqa: F401
    import mmengine.optim  # noqa: F401  (wrappers, optimizers, schedulers)

    import hpff_dist.engine.mmengine_runner  # noqa: F401  (loops, without DeepSpeed)
    from hpff_dist import registry

    return vars(registry)


def _targets(cfg: Mapping[str, Any]) -> Iterator[_Target]:
    """Every dict of ``cfg`` this module checks, with its config key."""
    reg = _registries()
    if isinstance(cfg.get("model"), Mapping):
        yield _Target("model", cfg["model"], reg["MODELS"])
    for name, hook in (cfg.get("default_hooks") or {}).items():
        if isinstance(hook, Mapping):
            yield _Target(f"default_hooks.{name}", hook, reg["HOOKS"])
    for i, hook in enumerate(cfg.get("custom_hooks") or []):
        if isinstance(hook, Mapping):
            yield _Target(f"custom_hooks.{i}", hook, reg["HOOKS"])
    yield from _loops(cfg, reg["LOOPS"])
    yield from _optim(cfg, reg)
    yield from _schedulers(cfg.get("param_scheduler"), reg["PARAM_SCHEDULERS"])
    yield from _loaders(cfg, reg)


def _loops(cfg: Mapping[str, Any], loops: Any) -> Iterator[_Target]:
    train = cfg.get("train_cfg")
    if isinstance(train, Mapping):
        if "type" in train:
            yield _Target("train_cfg", train, loops)
        else:  # mmengine pops by_epoch and picks the loop from it
            kind = "EpochBasedTrainLoop" if train.get("by_epoch") else "IterBasedTrainLoop"
            yield _Target("train_cfg", train, loops, kind, frozenset({"by_epoch"}))
    for key, kind in (("val_cfg", "ValLoop"), ("test_cfg", "TestLoop")):
        if isinstance(cfg.get(key), Mapping):
            yield _Target(key, cfg[key], loops, kind)


def _optim(cfg: Mapping[str, Any], reg: dict[str, Any]) -> Iterator[_Target]:
    wrapper = cfg.get("optim_wrapper")
    if not isinstance(wrapper, Mapping) or "optimizer" not in wrapper:
        return  # absent, or one wrapper per sub-model: left to mmengine
    if wrapper.get("constructor", "DefaultOptimWrapperConstructor") not in (
        "DefaultOptimWrapperConstructor",
        "mmengine.DefaultOptimWrapperConstructor",
    ):
        return  # a custom constructor reads the dict its own way
    from hpff_dist.engine.deepspeed.policy import DEEPSPEED_OPTIM_WRAPPER

    consumed = _OPTIM_WRAPPER_OWN
    if wrapper.get("type") == DEEPSPEED_OPTIM_WRAPPER:
        consumed = consumed | _MOVED_TO_DEEPSPEED
    yield _Target("optim_wrapper", wrapper, reg["OPTIM_WRAPPERS"], "OptimWrapper", consumed)
    if isinstance(wrapper["optimizer"], Mapping):
        yield _Target("optim_wrapper.optimizer", wrapper["optimizer"], reg["OPTIMIZERS"])


def _schedulers(schedulers: Any, registry: Any, key: str = "param_scheduler") -> Iterator[_Target]:
    """``param_scheduler``: one dict, a list, or a dict of those per optimizer."""
    consumed = frozenset({"convert_to_iter_based"})  # mmengine's build takes it out
    if isinstance(schedulers, Mapping) and "type" in schedulers:
        yield _Target(key, schedulers, registry, None, consumed)
    elif isinstance(schedulers, Mapping):
        for name, value in schedulers.items():
            yield from _schedulers(value, registry, f"{key}.{name}")
    elif isinstance(schedulers, (list, tuple)):
        for i, scheduler in enumerate(schedulers):
            if isinstance(scheduler, Mapping):
                yield _Target(f"{key}.{i}", scheduler, registry, None, consumed)


def _loaders(cfg: Mapping[str, Any], reg: dict[str, Any]) -> Iterator[_Target]:
    """Loader dicts (torch ``DataLoader`` arguments), their dataset, sampler and pipeline.
    Loaders with a ``type`` (DALI) are objects of ours, built by ``materialize_dataloaders``."""
    for key in LOADER_KEYS:
        loader = cfg.get(key)
        if not isinstance(loader, Mapping) or "type" in loader:
            continue
        yield _Target(key, loader, None, "torch.utils.data.DataLoader", _LOADER_OWN)
        dataset = loader.get("dataset")
        if isinstance(dataset, Mapping):
            yield _Target(f"{key}.dataset", dataset, reg["DATASETS"])
            for i, step in enumerate(dataset.get("pipeline") or []):
                if isinstance(step, Mapping):
                    yield _Target(f"{key}.dataset.pipeline.{i}", step, reg["TRANSFORMS"])
        sampler = loader.get("sampler")
        if isinstance(sampler, Mapping):
            yield _Target(f"{key}.sampler", sampler, reg["DATA_SAMPLERS"])


def _class_of(target: _Target) -> type | None:
    kind = target.args.get("type", target.default_type)
    if inspect.isclass(kind):
        return kind
    if target.registry is None:  # only the DataLoader
        from torch.utils.data import DataLoader

        return DataLoader
    if not isinstance(kind, str):
        return None
    try:
        found = target.registry.get(kind)
    except (KeyError, ImportError):  # a bad scope: mmengine's build says so
        return None
    return found if inspect.isclass(found) else None


def _problems(target: _Target, runner: type) -> Iterator[str]:
    cls = _class_of(target)
    if cls is None:
        return
    accepted = accepted_arguments(cls)
    note = ""
    if accepted is None and _is_checkpoint_hook(cls):
        own = _named_arguments(cls)
        extra = (accepted_arguments(runner, "save_checkpoint") or frozenset()) - own
        extra -= _CHECKPOINT_HOOK_SETS
        accepted = own | extra
        takes = ", ".join(sorted(extra)) if extra else "none the hook does not set itself"
        note = f" (other arguments go to {runner.__name__}.save_checkpoint, which takes {takes})"
    if accepted is None:
        return
    for arg in target.args:
        if arg == "type" or arg.startswith("_") or arg in accepted or arg in target.consumed:
            continue
        valid = sorted(accepted | target.consumed)
        close = difflib.get_close_matches(arg, valid, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        yield (
            f"{target.key}.{arg}: {cls.__name__} takes no argument {arg!r}{hint}{note}; "
            f"its arguments: {', '.join(valid)}"
        )


def _is_checkpoint_hook(cls: type) -> bool:
    from mmengine.hooks import CheckpointHook

    return issubclass(cls, CheckpointHook)


def _named_arguments(cls: type) -> frozenset[str]:
    """Every named ``__init__`` argument along ``cls``'s MRO (its ``**kwargs`` aside)."""
    names: set[str] = set()
    for klass in cls.__mro__[:-1]:  # not object
        if "__init__" in vars(klass):
            params = inspect.signature(vars(klass)["__init__"]).parameters.values()
            names |= {p.name for p in params if p.kind in _KEYWORD and p.name != "self"}
    return frozenset(names)


def check_arguments(cfg: Mapping[str, Any]) -> None:
    """Raise ``ConfigArgumentError`` listing every argument of ``cfg``'s hooks, loops, optim
    wrapper, optimizer, schedulers, model, loaders, datasets, samplers and transforms that
    the class it is passed to does not take, by config key, with the closest valid name."""
    from hpff_dist.engine.mmengine_runner import FlexibleRunner, Runner

    runner = Runner if cfg.get("strategy") is None else FlexibleRunner
    problems = [p for target in _targets(cfg) for p in _problems(target, runner)]
    if problems:
        raise ConfigArgumentError(
            "config argument(s) that nothing takes (checked before building the run):\n  "
            + "\n  ".join(problems)
            + "\nFix the spelling in the config file or its --cfg-options."
        )
