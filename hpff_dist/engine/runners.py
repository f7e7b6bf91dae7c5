"""mmengine's two runners with checkpoints that are strict, safe to read, and written atomically.

What changes against mmengine's ``Runner``/``FlexibleRunner``:

* **strict loads**: ``load_from`` and resume refuse a checkpoint whose keys or shapes do not
  fit the model, listing them (mmengine logs a warning and goes on, so ``tools/test.py`` reported
  the metrics of a half-loaded model). ``load_strict = False`` in a config (``--partial-load``
  in the tools) loads the matching keys on purpose and logs the rest.
* **readable refusals**: a text, empty, truncated or foreign file is named as not a checkpoint
  (:func:`~hpff_dist.engine.checkpoint_files.read_checkpoint`); DeepSpeed's module state (a
  checkpoint directory or its ``mp_rank_00_model_states.pt``) loads as weights.
* **resume that says what it does**: ``resume=True`` without ``load_from`` resumes the newest
  intact checkpoint of the work dir and is an error when there is none; ``resume='auto'``
  starts from scratch then (:func:`~hpff_dist.engine.checkpoint_files.find_resume_checkpoint`).
* **atomic saves**: a checkpoint file is written under a hidden partial name, flushed and
  renamed, so ``last_checkpoint`` (written by ``CheckpointHook`` after the save returns) never
  names a half-written file. The DeepSpeed strategy does the same for its directories.
"""

from __future__ import annotations

import logging
import os
import os.path as osp
import re
from collections import OrderedDict
from typing import Any

import torch.distributed as torch_dist
from mmengine.dist import master_only
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.runner.checkpoint import _load_checkpoint_to_model

from hpff_dist.engine.checkpoint import check_same_model
from hpff_dist.engine.checkpoint_files import (
    CheckpointError,
    atomic_write,
    find_resume_checkpoint,
    read_checkpoint,
)
from hpff_dist.engine.mmengine_runner import FlexibleRunner, Runner

__all__ = ["AUTO_RESUME", "LocalFlexibleRunner", "LocalRunner", "resume_target"]

#: ``resume='auto'``: resume the newest intact checkpoint if there is one, else start fresh.
AUTO_RESUME = "auto"
_REVISE_KEYS = [(r"^module\.", "")]


def resume_target(resume: Any, load_from: str | None, work_dir: str) -> str | None:
    """The checkpoint a run with these ``resume``/``load_from`` values resumes from, or
    ``None`` for a run that does not resume (``resume='auto'`` and nothing in ``work_dir``).
    An explicit path must be an existing checkpoint."""
    if not resume:
        return None
    if isinstance(resume, str) and resume != AUTO_RESUME:  # FlexibleRunner: resume=<path>
        load_from = resume
    if load_from is not None:
        if not osp.exists(load_from):
            raise CheckpointError(f"--resume: checkpoint {load_from} does not exist")
        return load_from
    return find_resume_checkpoint(work_dir, required=resume != AUTO_RESUME)


def _rank0_choice(target: str | None) -> str | None:
    """Rank 0's resume target on every rank. Each rank finds its target alone, before the
    process group exists (``build_runner``); a ``last_checkpoint`` written a moment late, or
    seen late through a network filesystem's cache, would make ranks resume different
    checkpoints (then hang in their first collective). The group exists now: agree."""
    if not (torch_dist.is_available() and torch_dist.is_initialized()):
        return target
    if torch_dist.get_world_size() == 1:
        return target
    chosen = [target]
    torch_dist.broadcast_object_list(chosen, src=0)
    if chosen[0] != target:
        print_log(
            f"rank {torch_dist.get_rank()} found {target} to resume, rank 0 {chosen[0]}: "
            "resuming rank 0's on every rank",
            logger="current",
            level=logging.WARNING,
        )
    return chosen[0]


def _revised(state: dict, revise_keys: list) -> dict:
    for pattern, replacement in revise_keys:
        state = OrderedDict((re.sub(pattern, replacement, k), v) for k, v in state.items())
    return state


class _CheckpointPolicy:
    """``load_or_resume`` shared by both runners (see the module docstring)."""

    def load_or_resume(self) -> None:
        if self._has_loaded:
            return
        target = _rank0_choice(resume_target(self._resume, self._load_from, self.work_dir))
        if target is not None:
            self.logger.info(f"resuming from {target}")
            self.resume(target)
            self._has_loaded = True
        elif self._load_from is not None and not self._resume:
            self.load_checkpoint(self._load_from)
            self._has_loaded = True

    @property
    def load_strict(self) -> bool:
        """``load_strict`` of the config (default ``True``): refuse partial checkpoint loads."""
        return bool((self.cfg or {}).get("load_strict", True))


class LocalRunner(_CheckpointPolicy, Runner):
    """mmengine's ``Runner`` with strict, safe checkpoint loads and atomic saves."""

    def load_checkpoint(
        self,
        filename: str,
        map_location: Any = "cpu",
        strict: bool | None = None,
        revise_keys: list = _REVISE_KEYS,
    ) -> dict:
        """Load ``filename`` into the model; ``strict=None`` means the config's ``load_strict``.
        A strict load refuses missing, unexpected or mis-shaped keys with their names."""
        strict = self.load_strict if strict is None else strict
        checkpoint = read_checkpoint(filename, map_location)
        if getattr(self, "_resuming", False):
            self._check_resumable(checkpoint, filename)
        self.call_hook("after_load_checkpoint", checkpoint=checkpoint)
        model = self.model.module if is_model_wrapper(self.model) else self.model
        state = _revised(checkpoint.get("state_dict", checkpoint), revise_keys)
        if strict:
            check_same_model(state, model, filename)
        checkpoint = _load_checkpoint_to_model(model, checkpoint, False, revise_keys=revise_keys)
        self._has_loaded = True
        self.logger.info(f"Load checkpoint from {filename}" + ("" if strict else " (partial)"))
        return checkpoint

    def resume(self, filename: str, *args: Any, **kwargs: Any) -> None:
        """mmengine's resume, refusing what only another runner can resume (a DeepSpeed
        directory) or what holds no training state (weights only)."""
        if osp.isdir(filename):
            raise CheckpointError(
                f"{filename} is a DeepSpeed checkpoint directory: resume it with the DeepSpeed "
                "strategy that wrote it (the same launcher and `strategy`); the single-process "
                "runner can only start from its weights (load_from, without --resume)."
            )
        self._resuming = True
        try:
            return super().resume(filename, *args, **kwargs)
        finally:
            self._resuming = False

    def _check_resumable(self, checkpoint: dict, filename: str) -> None:
        missing = [k for k in ("meta", "optimizer") if not checkpoint.get(k)]
        if not missing and "epoch" not in checkpoint["meta"]:
            missing = ["meta.epoch"]
        if self.param_schedulers and "param_schedulers" not in checkpoint:
            missing.append("param_schedulers")
        if missing:
            raise CheckpointError(
                f"{filename} holds no training state to resume (no {', '.join(missing)}: e.g. "
                "a best_*.pth, or weights only): resume needs an epoch_N/iter_N checkpoint "
                "written by tools/train.py. To start from its weights, set load_from without "
                "--resume."
            )

    @master_only
    def save_checkpoint(self, out_dir: str, filename: str, *args: Any, **kwargs: Any) -> None:
        """mmengine's save, through a hidden partial file renamed when complete (local disks;
        remote backends, ``backend_args``/``file_client_args``, are written as mmengine does)."""
        remote = (args and args[0] is not None) or kwargs.get("file_client_args") is not None
        if remote or kwargs.get("backend_args") is not None or "://" in out_dir:
            return super().save_checkpoint(out_dir, filename, *args, **kwargs)
        os.makedirs(out_dir, exist_ok=True)
        atomic_write(
            osp.join(out_dir, filename),
            lambda partial: Runner.save_checkpoint(
                self, out_dir, osp.basename(partial), *args, **kwargs
            ),
        )


class LocalFlexibleRunner(_CheckpointPolicy, FlexibleRunner):
    """mmengine's ``FlexibleRunner`` with our resume policy; the DeepSpeed strategy checks the
    model before loading and saves atomically (``LocalDeepSpeedStrategy``)."""
