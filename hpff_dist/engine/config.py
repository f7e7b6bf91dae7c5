"""Loading experiment configs: ``_base_`` inheritance, ``--cfg-options``, and key checks.

mmengine silently ignores top-level keys it does not know, so a typo such as
``trian_dataloader`` would train with the defaults. We reject unknown keys with a suggestion.
Helper variables (``max_epochs``, ``batch_size`` ...) are read once, when the file is: the
keys computed from them already hold their values, so ``--cfg-options max_epochs=1`` would
change nothing but the saved config. Such an override is refused, naming the keys to set.
A syntax error names its file and line, in a ``_base_`` file too (mmengine reports
``<unknown>``).
"""

from __future__ import annotations

import ast
import difflib
import os.path as osp
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from mmengine.config import Config, DictAction

from hpff_dist.data.loader_builder import LOADER_KEYS

__all__ = [
    "HELPER_KEYS",
    "KNOWN_KEYS",
    "RUN_KEYS",
    "DictAction",
    "check_helper_overrides",
    "check_keys",
    "check_syntax",
    "load_config",
]

#: keys a run reads: mmengine's Runner/FlexibleRunner, and ours.
RUN_KEYS = frozenset(
    {
        # mmengine Runner.from_cfg / FlexibleRunner.from_cfg
        "model", "work_dir", "train_dataloader", "val_dataloader", "test_dataloader",
        "train_cfg", "val_cfg", "test_cfg", "auto_scale_lr", "optim_wrapper",
        "param_scheduler", "val_evaluator", "test_evaluator", "default_hooks", "custom_hooks",
        "data_preprocessor", "load_from", "resume", "launcher", "env_cfg", "log_processor",
        "log_level", "visualizer", "default_scope", "randomness", "experiment_name",
        "strategy", "compile", "cfg", "runner_type", "custom_imports",
        # ours: hpff_dist.engine.cpu_malloc, hpff_dist.engine.runners
        "cpu_malloc", "load_strict",
    }
)  # fmt: skip
#: helper variables of our base configs: read only while the file is, by the keys above.
HELPER_KEYS = frozenset(
    {
        "data_root", "batch_size", "train_pipeline", "test_pipeline", "max_epochs",
        "max_iters", "num_classes", "image_size", "crop_size", "scales",
        "dist", "checkpoint_interval",
    }
)  # fmt: skip
KNOWN_KEYS = RUN_KEYS | HELPER_KEYS


def check_keys(keys: Iterable[str], source: str) -> None:
    """Raise ``KeyError`` naming unknown top-level config keys (``_``-prefixed ones are free)."""
    unknown = sorted(k for k in keys if not k.startswith("_") and k not in KNOWN_KEYS)
    if not unknown:
        return
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, KNOWN_KEYS, n=1)
        hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise KeyError(
        f"{source}: unknown config key(s) {', '.join(hints)}. Fix the spelling, or prefix a "
        "helper variable with '_' (known keys: hpff_dist.engine.config.KNOWN_KEYS)."
    )


def check_syntax(path: str, _seen: set[str] | None = None) -> None:
    """Parse ``path`` and its local ``_base_`` files, raising ``SyntaxError`` with the file
    and line of the first error (mmengine parses without the name and says ``<unknown>``)."""
    seen = _seen if _seen is not None else set()
    path = osp.abspath(path)
    if path in seen or not path.endswith(".py"):
        return
    seen.add(path)
    with open(path, encoding="utf-8") as f:
        source = f.read()
    try:
        tree = ast.parse(source, filename=path)
    except SyntaxError as err:
        where = (path, err.lineno, err.offset, err.text, err.end_lineno, err.end_offset)
        raise SyntaxError(f"config file {path}, line {err.lineno}: {err.msg}", where) from None
    for base in _base_files(tree, osp.dirname(path)):
        check_syntax(base, seen)


def _base_files(tree: ast.Module, folder: str) -> list[str]:
    """The existing local files a parsed config's ``_base_ = ...`` names."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "_base_" for t in node.targets
        ):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                return []
            names = [value] if isinstance(value, str) else list(value)
            paths = (osp.join(folder, n) for n in names if isinstance(n, str) and "::" not in n)
            return [p for p in paths if osp.isfile(p)]
    return []


def check_helper_overrides(cfg: Mapping[str, Any], options: Iterable[str]) -> None:
    """Refuse ``--cfg-options`` on helper variables (top-level keys no run reads), naming the
    keys to set instead: those holding the helper's value (computed from it when the file
    was read), or, where none does, those of the same name."""
    problems = []
    for option in options:
        top = option.split(".")[0]
        if top in RUN_KEYS:
            continue
        keys = list(_paths_holding(cfg, cfg[top])) if top in cfg else []
        keys = keys or list(_paths_named(cfg, top))
        keys = [key + option[len(top) :] for key in keys]  # a.0.x -> b.c.0.x
        fix = f"set {', '.join(keys)} instead" if keys else "nothing reads it: drop it"
        if top == "data_root":
            fix = "use --data-root DIR (every loader's dataset root)" + (
                f", or set {', '.join(keys)}" if keys else ""
            )
        problems.append(f"--cfg-options {option}: {fix}")
    if problems:
        raise ValueError(
            "helper variables are read only while the config file is: the keys computed from "
            "them already hold their values, so overriding one changes nothing but the saved "
            "config.\n  " + "\n  ".join(problems)
        )


def _walk(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(``cfg-options`` key, value) of every run key's value, nested ones included."""
    if isinstance(node, Mapping):
        items = [(k, v) for k, v in node.items() if prefix or k in RUN_KEYS]
    elif isinstance(node, (list, tuple)) and prefix:
        items = list(enumerate(node))
    else:
        return
    for k, v in items:
        key = f"{prefix}.{k}" if prefix else str(k)
        yield key, v
        yield from _walk(v, key)


def _paths_holding(cfg: Mapping[str, Any], value: Any) -> Iterator[str]:
    inside: str | None = None  # a match's own items are not listed again
    for key, v in _walk(cfg):
        if inside is not None and key.startswith(inside + "."):
            continue
        if isinstance(v, bool) is isinstance(value, bool) and v == value:
            inside = key
            yield key


def _paths_named(cfg: Mapping[str, Any], name: str) -> Iterator[str]:
    return (key for key, _ in _walk(cfg) if key.rsplit(".", 1)[-1] == name)


def set_data_root(cfg: Config, root: str) -> None:
    """Point every loader at ``root`` (``dataset.root``, or ``root`` for loaders that are not
    torch datasets, e.g. DALI). Base configs resolve ``data_root`` when they are read, so
    overriding that variable alone would leave the loaders where they were."""
    for key in LOADER_KEYS:
        loader = cfg.get(key)
        if not loader:
            continue
        target = loader.get("dataset") if "dataset" in loader else loader
        if target is None or "root" not in target:
            raise KeyError(f"{key} has no dataset root to set; set it with --cfg-options")
        target["root"] = root


def load_config(
    path: str,
    cfg_options: dict | None = None,
    work_dir: str | None = None,
    data_root: str | None = None,
) -> Config:
    """Read a config file, check its keys, apply overrides and ``data_root``, fill
    ``work_dir``. Nothing else: what a run changes on top is
    :func:`hpff_dist.engine.resolve.resolve_config`'s job, on record."""
    if not osp.isfile(path):
        raise FileNotFoundError(f"config file {path!r} does not exist")
    check_syntax(path)
    cfg = Config.fromfile(path)
    check_keys(cfg.keys(), path)
    if cfg_options:
        check_keys({k.split(".")[0] for k in cfg_options}, "--cfg-options")
        check_helper_overrides(cfg.to_dict(), cfg_options)
        cfg.merge_from_dict(cfg_options)
    if data_root is not None:
        set_data_root(cfg, data_root)
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get("work_dir") is None:
        cfg.work_dir = osp.join("work_dirs", osp.splitext(osp.basename(path))[0])
    return cfg
