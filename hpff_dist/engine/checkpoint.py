"""Checkpoint checks around DeepSpeed's save and load: BatchNorm buffers agree before a save,
and a checkpoint from another model is refused with names before DeepSpeed loads it.

Pure torch (no DeepSpeed import): the strategy calls these, the tests call them directly.
"""

from __future__ import annotations

import logging
import os
import os.path as osp
import pickle
import re
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as torch_dist
from mmengine.logging import print_log
from torch import nn

from hpff_dist import compat

__all__ = [
    "MODEL_STATES_FILE",
    "average_bn_buffers",
    "check_deepspeed_checkpoint",
    "stage_state_files",
    "stage_states_file",
    "check_same_model",
    "load_deepspeed_module_state",
    "torch_safe_load",
]

# Where DeepSpeed writes the (full, at stage <= 2) module state inside a checkpoint directory.
MODEL_STATES_FILE = "mp_rank_00_model_states.pt"


def average_bn_buffers(module: nn.Module, group: Any = None) -> int:
    """Average BatchNorm running statistics over ranks in place; returns how many were synced.

    Each rank normalises with its own shard's statistics, so running means/variances drift
    apart. Before a checkpoint is written (DeepSpeed writes rank 0's module) we replace them on
    every rank by the mean over ranks: what is saved is the same whichever rank wrote it, and a
    resumed run starts from the buffers the uninterrupted run continues with. Training-mode
    outputs and gradients do not depend on running statistics, so parameters are unaffected."""
    if not (torch_dist.is_available() and torch_dist.is_initialized()):
        return 0
    world = torch_dist.get_world_size(group)
    if world == 1:
        return 0
    tensors = []
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats:
            tensors += [t for t in (m.running_mean, m.running_var) if t is not None]
    if not tensors:
        return 0
    flat = torch.cat([t.detach().reshape(-1).double() for t in tensors])
    if torch.cuda.is_available() and torch_dist.get_backend() == "nccl":
        flat = flat.cuda()
    torch_dist.all_reduce(flat, group=group)
    flat = (flat / world).cpu()
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset : offset + n].view_as(t).to(t.dtype))
        offset += n
    return len(tensors)


def stage_states_file(stage: int) -> str:
    """The module-state file DeepSpeed writes for model-parallel rank ``stage``."""
    return f"mp_rank_{stage:02d}_model_states.pt"


def stage_state_files(directory: str) -> list[str]:
    """The ``mp_rank_XX_model_states.pt`` files of a DeepSpeed checkpoint, in stage order: one
    for a data-parallel run, one per stage for a pipelined run."""
    if not osp.isdir(directory):
        return []
    names = sorted(
        n for n in os.listdir(directory) if re.fullmatch(r"mp_rank_\d+_model_states\.pt", n)
    )
    return [osp.join(directory, n) for n in names]


def stage_files_hint(directory: str) -> str:
    files = [osp.basename(f) for f in stage_state_files(directory)]
    if not files:
        return "it holds no mp_rank_XX_model_states.pt"
    return (
        f"it holds {', '.join(files)}: a run of {len(files)} pipeline stage(s) wrote it; resume "
        f"with the same strategy.pipeline.stages, or merge the stages with "
        "tools/convert_checkpoint.py"
    )


def _state_shapes(state: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items() if hasattr(v, "shape")}


#: how to load a checkpoint that does not fit on purpose, with the single-process runner
PARTIAL_LOAD_HINT = (
    "to load only the matching weights on purpose (fine-tuning, another head), set "
    "`load_strict = False` in the config (tools: --partial-load)"
)
#: DeepSpeed loads whole checkpoint directories only
DEEPSPEED_PARTIAL_HINT = (
    "DeepSpeed loads a checkpoint directory whole (no partial loads); to start from part of "
    "it, convert it (tools/convert_checkpoint.py) and load that .pth with load_from and "
    "--partial-load"
)


def check_same_model(
    saved: Mapping[str, Any], module: nn.Module, source: str, hint: str = PARTIAL_LOAD_HINT
) -> None:
    """Raise a readable error when a checkpoint's module state is from another model."""
    ours, theirs = _state_shapes(module.state_dict()), _state_shapes(saved)
    missing = sorted(set(ours) - set(theirs))
    unexpected = sorted(set(theirs) - set(ours))
    shapes = sorted(k for k in set(ours) & set(theirs) if ours[k] != theirs[k])
    if missing or unexpected or shapes:

        def show(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f" ... ({len(keys)} total)" if len(keys) > 5 else "")

        parts = []
        if missing:
            parts.append(f"missing keys: {show(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {show(unexpected)}")
        if shapes:
            parts.append(
                "shape mismatch: " + ", ".join(f"{k} {theirs[k]} vs {ours[k]}" for k in shapes[:5])
            )
        raise ValueError(
            f"checkpoint {source} was saved from a different model than "
            f"{type(module).__name__} built from this config ({'; '.join(parts)}). Check that "
            f"config and checkpoint belong together; {hint}."
        )


def torch_safe_load(path: str, map_location: Any = "cpu", mmap: bool = False) -> Any:
    """``torch.load`` with the safe unpickler (``weights_only=True``) and, for this load, the
    mmengine/numpy types our checkpoints hold (:func:`hpff_dist.compat.mmengine_checkpoint_globals`).
    Raises ``pickle.UnpicklingError`` for any other type; ``mmap`` maps the tensors instead of
    reading them (zip files only)."""
    # torch's safe_globals context removes its globals on exit, even ones allowed before it
    # (compat's process-wide allow-list): hand it only those not allowed yet.
    allowed = set(torch.serialization.get_safe_globals())
    extra = [g for g in compat.mmengine_checkpoint_globals() if g not in allowed]
    with torch.serialization.safe_globals(extra):
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)


def load_deepspeed_module_state(path: str) -> dict[str, Any] | None:
    """The ``module`` state dict of a DeepSpeed ``mp_rank_00_model_states.pt``, loaded with
    torch's safe unpickler (``weights_only=True``), or ``None`` with a warning when the file
    holds a type that loader refuses.

    Besides tensors the file holds DeepSpeed's bookkeeping (ints, strings, shapes, its config
    dict) and mmengine's client state (message hub, meta): plain types plus the mmengine/numpy
    types of :func:`hpff_dist.compat.mmengine_checkpoint_globals`, allowed here for this load
    only. Anything else (a checkpoint from a DeepSpeed or mmengine we have not seen) is not
    unpickled by us: we skip the readable shape check, and DeepSpeed's own load still runs."""
    try:
        saved = torch_safe_load(path)
    except pickle.UnpicklingError:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        print_log(
            f"{path} holds types torch's weights_only loader refuses ({', '.join(unsafe)}); "
            "skipping the model-shape check before DeepSpeed loads it",
            logger="current",
            level=logging.WARNING,
        )
        return None
    return dict(saved.get("module") or {})


def check_deepspeed_checkpoint(
    filename: str, module: nn.Module, states_file: str = MODEL_STATES_FILE
) -> None:
    """Refuse, with names, what DeepSpeed would load wrongly or with an unreadable error: a
    single-file checkpoint, a directory that is not a DeepSpeed checkpoint, or one written by a
    different model. ``states_file``: the module-state file this process loads (a pipeline
    stage loads ``mp_rank_<stage>_model_states.pt``)."""
    if osp.isfile(filename):
        raise ValueError(
            f"{filename} is a single-file checkpoint (single-process Runner); DeepSpeed "
            "checkpoints are directories. Resume it with the same launcher/strategy it was "
            "written by, or start from it with the single-process runner."
        )
    states = osp.join(filename, states_file)
    if not osp.isfile(states):
        raise FileNotFoundError(
            f"{filename} is not a DeepSpeed checkpoint directory for this process (no "
            f"{states_file}; {stage_files_hint(filename)})"
        )
    saved = load_deepspeed_module_state(states)
    if saved is not None:
        check_same_model(saved, module, filename, DEEPSPEED_PARTIAL_HINT)
