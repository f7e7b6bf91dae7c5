"""Loading experiment configs: ``_base_`` inheritance, ``--cfg-options``, and key checks.

mmengine silently ignores top-level keys it does not know, so a typo such as
``trian_dataloader`` would train with the defaults. We reject unknown keys with a suggestion.
"""

from __future__ import annotations

import difflib
import os.path as osp
from collections.abc import Iterable

from mmengine.config import Config, DictAction

from hpff_dist.data.loader_builder import LOADER_KEYS

__all__ = ["KNOWN_KEYS", "DictAction", "load_config", "check_keys"]

#: keys mmengine's Runner/FlexibleRunner read, plus the helper variables our base configs use.
KNOWN_KEYS = frozenset(
    {
        # mmengine Runner.from_cfg / FlexibleRunner.from_cfg
        "model", "work_dir", "train_dataloader", "val_dataloader", "test_dataloader",
        "train_cfg", "val_cfg", "test_cfg", "auto_scale_lr", "optim_wrapper",
        "param_scheduler", "val_evaluator", "test_evaluator", "default_hooks", "custom_hooks",
        "data_preprocessor", "load_from", "resume", "launcher", "env_cfg", "log_processor",
        "log_level", "visualizer", "default_scope", "randomness", "experiment_name",
        "strategy", "compile", "cfg", "runner_type", "custom_imports",
        # ours: hpff_dist.engine.cpu_malloc
        "cpu_malloc",
        # helper variables of our base configs
        "data_root", "batch_size", "train_pipeline", "test_pipeline", "max_epochs",
        "max_iters", "num_classes", "image_size", "crop_size", "scales",
        "dist", "checkpoint_interval",
    }
)  # fmt: skip


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
    cfg = Config.fromfile(path)
    check_keys(cfg.keys(), path)
    if cfg_options:
        check_keys({k.split(".")[0] for k in cfg_options}, "--cfg-options")
        cfg.merge_from_dict(cfg_options)
    if data_root is not None:
        set_data_root(cfg, data_root)
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get("work_dir") is None:
        cfg.work_dir = osp.join("work_dirs", osp.splitext(osp.basename(path))[0])
    return cfg
