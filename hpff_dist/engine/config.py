"""Loading experiment configs: ``_base_`` inheritance, ``--cfg-options``, and key checks.

mmengine silently ignores top-level keys it does not know, so a typo such as
``trian_dataloader`` would train with the defaults. We reject unknown keys with a suggestion.
Helper variables (``max_epochs``, ``batch_size`` ...) are read once, when the file is: the
keys computed from them already hold their values, so ``--cfg-options max_epochs=1`` would
change nothing but the saved config. Such an override is refused, naming the keys to set:
those computed from it, found in the config files' source.
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
    "derived_paths",
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
        # mmseg's test-time augmentation (tools/test.py --tta)
        "tta_model", "tta_pipeline",
        # ours: hpff_dist.engine.cpu_malloc, hpff_dist.engine.runners
        "cpu_malloc", "load_strict",
    }
)  # fmt: skip
#: helper variables of our base configs: read only while the file is, by the keys above.
HELPER_KEYS = frozenset(
    {
        "data_root", "batch_size", "train_pipeline", "test_pipeline", "max_epochs",
        "max_iters", "num_classes", "image_size", "crop_size", "scales",
        "dist", "checkpoint_interval", "image_scale", "tta_ratios", "norm_cfg",
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


def check_helper_overrides(
    cfg: Mapping[str, Any], options: Iterable[str], path: str | None = None
) -> None:
    """Refuse ``--cfg-options`` on helper variables (top-level keys no run reads), naming the
    keys to set instead: those the source of config file ``path`` (``cfg.filename`` by
    default) and its ``_base_`` files compute from the helper (:func:`derived_paths`), or,
    where none is, those of the same name."""
    path = path or getattr(cfg, "filename", None)
    problems = []
    for option in options:
        top = option.split(".")[0]
        if top in RUN_KEYS:
            continue
        keys = derived_paths(path, top, cfg) if path else []
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


# A config's source, evaluated just enough to tell where a variable ends up: a value is a
# dict (``dict(...)`` or ``{...}``: key -> value), a list (list or tuple) or a leaf, ``True``
# where the variable was used to compute it. mmengine merges a child's dicts into its base's.
_Tree = Any
_DELETE = object()  # ``_delete_=True``: the dict replaces the base's instead of merging


def derived_paths(path: str, name: str, cfg: Mapping[str, Any] | None = None) -> list[str]:
    """The ``--cfg-options`` keys (``a.b.0.c``) of run keys whose values config file ``path``
    or its ``_base_`` files compute from top-level variable ``name``: used there, directly or
    through other top-level variables (``test_dataloader = val_dataloader``), and not set again
    without it by a child file. With ``cfg`` (the loaded config), only keys it has."""
    merged = _file_tree(osp.abspath(path), name, set())
    keys = [key for top, tree in merged.items() if top in RUN_KEYS for key in _marked(tree, top)]
    return [key for key in keys if cfg is None or _has_key(cfg, key)]


def _file_tree(path: str, name: str, seen: set[str]) -> dict[str, _Tree]:
    if path in seen or not path.endswith(".py") or not osp.isfile(path):
        return {}
    seen.add(path)
    with open(path, encoding="utf-8") as f:
        module = ast.parse(f.read(), filename=path)
    base: dict[str, _Tree] = {}
    for base_path in _base_files(module, osp.dirname(path)):
        base.update(_file_tree(base_path, name, seen))  # mmengine refuses shared keys
    return _merge(_module_tree(module, name), base)


def _module_tree(module: ast.Module, name: str) -> dict[str, _Tree]:
    env: dict[str, _Tree] = {}
    for stmt in module.body:
        if isinstance(stmt, ast.Assign):
            targets, value = stmt.targets, _tree(stmt.value, name, env)
        elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
            targets, value = [stmt.target], _tree(stmt.value, name, env)
        elif isinstance(stmt, ast.AugAssign):
            targets, value = [stmt.target], _uses(stmt, name, env)
        else:
            continue
        for target in targets:
            if isinstance(target, ast.Name):
                env[target.id] = value
            else:  # a, b = ...: each name computed from the whole value
                for node in ast.walk(target):
                    if isinstance(node, ast.Name):
                        env[node.id] = _has_mark(value)
    env.pop("_base_", None)
    return env


def _tree(node: ast.expr, name: str, env: dict[str, _Tree]) -> _Tree:
    if isinstance(node, ast.Name):
        return True if node.id == name else env.get(node.id, False)
    if isinstance(node, (ast.List, ast.Tuple)):
        items: list[_Tree] = []
        for elt in node.elts:
            if not isinstance(elt, ast.Starred):
                items.append(_tree(elt, name, env))
                continue
            sub = _tree(elt.value, name, env)
            if not isinstance(sub, list):
                return _uses(node, name, env)
            items.extend(sub)
        return items
    pairs: list[tuple[str | None, ast.expr]] = []
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict":
        pairs = [(None, arg) for arg in node.args] + [(kw.arg, kw.value) for kw in node.keywords]
    elif isinstance(node, ast.Dict) and all(
        k is None or isinstance(k, ast.Constant) for k in node.keys
    ):
        pairs = [(None if k is None else str(k.value), v) for k, v in zip(node.keys, node.values)]
    else:
        return _uses(node, name, env)
    out: dict[str, _Tree] = {}
    for key, value in pairs:
        if key is None:  # dict(base, ...), dict(**base), {**base}
            sub = _tree(value, name, env)
            if not isinstance(sub, dict):
                return _uses(node, name, env)
            out.update(sub)
        elif key == "_delete_" and isinstance(value, ast.Constant) and value.value is True:
            out[key] = _DELETE
        else:
            out[key] = _tree(value, name, env)
    return out


def _uses(node: ast.AST, name: str, env: dict[str, _Tree]) -> bool:
    """Whether an expression the tree does not follow uses ``name`` (``{{_base_.name}}``
    included)."""
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name) and (sub.id == name or _has_mark(env.get(sub.id))):
            return True
        if isinstance(sub, ast.Attribute) and sub.attr == name:
            if isinstance(sub.value, ast.Name) and sub.value.id == "_base_":
                return True
    return False


def _has_mark(tree: _Tree) -> bool:
    return next(_marked(tree, ""), None) is not None


def _marked(tree: _Tree, prefix: str) -> Iterator[str]:
    if tree is True:
        yield prefix
    elif isinstance(tree, (dict, list)):
        items = tree.items() if isinstance(tree, dict) else enumerate(tree)
        for key, sub in items:
            yield from _marked(sub, f"{prefix}.{key}" if prefix else str(key))


def _merge(child: dict[str, _Tree], base: dict[str, _Tree]) -> dict[str, _Tree]:
    """mmengine's ``Config._merge_a_into_b``: a child's dicts update its base's, any other
    value replaces it."""
    out = dict(base)
    for key, value in child.items():
        if (
            isinstance(value, dict)
            and isinstance(out.get(key), dict)
            and value.get("_delete_") is not _DELETE
        ):
            out[key] = _merge(value, out[key])
        else:
            out[key] = value
    return out


def _has_key(cfg: Any, key: str) -> bool:
    node = cfg
    for part in key.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, (list, tuple)) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False
    return True


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


def _paths_named(cfg: Mapping[str, Any], name: str) -> Iterator[str]:
    return (key for key, _ in _walk(cfg) if key.rsplit(".", 1)[-1] == name)


def set_data_root(cfg: Config, root: str) -> None:
    """Point every loader at ``root`` (``dataset.root``; mmseg-style datasets' ``data_root``;
    ``root`` for loaders that are not torch datasets, e.g. DALI). Base configs resolve
    ``data_root`` when they are read, so overriding that variable alone would leave the loaders
    where they were."""
    for key in LOADER_KEYS:
        loader = cfg.get(key)
        if not loader:
            continue
        target = loader.get("dataset") if "dataset" in loader else loader
        field = next((f for f in ("root", "data_root") if target and f in target), None)
        if field is None:
            raise KeyError(f"{key} has no dataset root to set; set it with --cfg-options")
        target[field] = root


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
        check_helper_overrides(cfg.to_dict(), cfg_options, path)
        cfg.merge_from_dict(cfg_options)
    if data_root is not None:
        set_data_root(cfg, data_root)
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get("work_dir") is None:
        cfg.work_dir = osp.join("work_dirs", osp.splitext(osp.basename(path))[0])
    return cfg
