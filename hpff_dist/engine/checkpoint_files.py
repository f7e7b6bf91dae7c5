"""Checkpoint files on disk: read one safely, tell an intact one from a broken one, find the one
to resume from, and write one so that a crash never leaves a half-written file under its name.

Why this exists next to mmengine's ``load_checkpoint``/``find_latest_checkpoint``: mmengine trusts
``last_checkpoint`` (a run killed while writing resumes into torch's miniz error), returns
``None`` when there is nothing to resume (the run silently starts from scratch), and hands
torch's ``weights_only`` advice (unpickle arbitrary code) to a user who passed a text file.

A checkpoint is a file written by ``torch.save`` (a zip archive), or a DeepSpeed directory
holding :data:`~hpff_dist.engine.checkpoint.MODEL_STATES_FILE`. Pure torch + mmengine logging.
"""

from __future__ import annotations

import logging
import os
import os.path as osp
import pickle
import re
import zipfile
from collections.abc import Callable
from typing import Any

import torch
from mmengine.logging import print_log

from hpff_dist.engine.checkpoint import (
    MODEL_STATES_FILE,
    stage_state_files,
    stage_states_file,
    torch_safe_load,
)

__all__ = [
    "LAST_CHECKPOINT_FILE",
    "CheckpointError",
    "atomic_write",
    "checkpoint_meta",
    "checkpoint_problem",
    "find_resume_checkpoint",
    "list_checkpoints",
    "read_checkpoint",
    "recorded_checkpoint",
    "require_checkpoint",
    "safe_load",
]

#: The file mmengine's CheckpointHook writes the newest checkpoint's path into.
LAST_CHECKPOINT_FILE = "last_checkpoint"
_ZIP_MAGIC = b"PK\x03\x04"
_LEGACY_PICKLE = b"\x80"  # torch.save(..., _use_new_zipfile_serialization=False)
#: what mmengine's CheckpointHook (and PreemptionHook) name a resumable checkpoint
_RESUMABLE_NAME = re.compile(r"(epoch|iter)_(\d+)\.pth")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as asked; the message names the file and the fix."""


def _file_problem(path: str, verify_data: bool) -> str | None:
    """Why ``path`` is not a readable torch checkpoint file, or ``None``."""
    if not osp.isfile(path):
        return "does not exist"
    size = osp.getsize(path)
    if size == 0:
        return "is empty (0 bytes): a run was killed before writing it"
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(_LEGACY_PICKLE):
        return None  # torch's pre-1.6 format; nothing to check without unpickling it
    if not head.startswith(_ZIP_MAGIC):
        kind = "a text file" if _looks_like_text(head) else "not a torch.save file"
        return f"is {kind} (starts with {head[:16]!r}), not a checkpoint"
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip() if verify_data else None
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        return f"is truncated or corrupt ({size} bytes; {error})"
    if bad is not None:
        return f"is corrupt (member {bad!r} fails its CRC check)"
    return None


def _looks_like_text(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def checkpoint_problem(path: str, verify_data: bool = True) -> str | None:
    """Why ``path`` is not an intact checkpoint (file or DeepSpeed directory), or ``None``.

    ``verify_data`` checks every member's CRC (reads the whole file: a second per GB), which
    also catches a file whose end was written but whose middle was not; without it only the
    zip directory at the file's end is read (truncation)."""
    if osp.isdir(path):
        states = osp.join(path, MODEL_STATES_FILE)
        if not osp.isfile(states):
            return f"is a directory without {MODEL_STATES_FILE}: not a DeepSpeed checkpoint"
        for name in sorted(os.listdir(path)):
            if name.endswith(".pt"):
                problem = _file_problem(osp.join(path, name), verify_data)
                if problem:
                    return f"holds {name}, which {problem}"
        return None
    return _file_problem(path, verify_data)


def require_checkpoint(path: str) -> None:
    """Raise :class:`CheckpointError` unless ``path`` looks like a readable checkpoint (cheap:
    no data is read; :func:`read_checkpoint` reports what only reading finds)."""
    problem = checkpoint_problem(path, verify_data=False)
    if problem:
        raise CheckpointError(
            f"checkpoint {path} {problem}. Pass a checkpoint written by tools/train.py "
            "(WORK_DIR/epoch_N.pth, iter_N.pth, or a DeepSpeed checkpoint directory)."
        )


def safe_load(path: str, map_location: Any, mmap: bool = False) -> Any:
    """:func:`~hpff_dist.engine.checkpoint.torch_safe_load`, its failures turned into
    :class:`CheckpointError` naming the file (``mmap``: tensors are mapped, not read, for a
    look at the metadata)."""
    try:
        return torch_safe_load(path, map_location, mmap)
    except pickle.UnpicklingError:
        try:
            unsafe = ", ".join(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        except Exception:  # noqa: BLE001 - the pickle itself is unreadable
            raise CheckpointError(
                f"{path} is not a readable torch checkpoint (its pickle data is invalid: "
                "corrupt, truncated, or not written by torch.save)"
            ) from None
        raise CheckpointError(
            f"{path} holds Python objects torch's safe loader refuses ({unsafe}). hpff-dist "
            "does not unpickle arbitrary objects (that can run code). If you trust the file, "
            "re-save just its tensors: torch.save({'state_dict': model.state_dict()}, path)."
        ) from None
    except (RuntimeError, EOFError, OSError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise CheckpointError(
            f"{path} cannot be read as a checkpoint ({type(error).__name__}: {first_line})"
        ) from None


def read_checkpoint(path: str, map_location: Any = "cpu") -> dict:
    """The checkpoint dict at ``path``, read with torch's safe loader, or a
    :class:`CheckpointError` naming what is wrong with the file.

    Accepts mmengine checkpoints (``{'meta', 'state_dict', ...}``), plain state dicts, and
    DeepSpeed's module state: a checkpoint directory or its ``mp_rank_00_model_states.pt``
    give ``{'state_dict': <module state>, 'meta': ...}`` (module weights only: optimizer
    partitions are for resuming with the same DeepSpeed strategy)."""
    require_checkpoint(path)
    if osp.isdir(path) and len(stage_state_files(path)) > 1:
        module, meta = merge_stage_modules(path, map_location)
        return {"state_dict": module, "meta": meta}
    file = osp.join(path, MODEL_STATES_FILE) if osp.isdir(path) else path
    saved = safe_load(file, map_location)
    if not isinstance(saved, dict):
        raise CheckpointError(
            f"{path} holds a {type(saved).__name__}, not a checkpoint dict (expected "
            "{'state_dict': ...} or a state dict of tensors)"
        )
    if "state_dict" not in saved and isinstance(saved.get("module"), dict):  # DeepSpeed
        return {"state_dict": saved["module"], "meta": saved.get("meta", {})}
    return saved


def merge_stage_modules(directory: str, map_location: Any = "cpu") -> tuple[dict, dict]:
    """The whole model's state dict from a pipelined run's DeepSpeed checkpoint, whose stage
    ``s`` wrote its own modules to ``mp_rank_<s>_model_states.pt``, and stage 0's meta. Refuses
    a checkpoint with a stage missing or two stages holding the same key."""
    files = stage_state_files(directory)
    merged: dict[str, Any] = {}
    meta: dict = {}
    for stage, file in enumerate(files):
        saved = safe_load(file, map_location)
        if not isinstance(saved, dict) or not isinstance(saved.get("module"), dict):
            raise CheckpointError(f"{file} is not a DeepSpeed module-state file")
        expected = int(saved.get("mp_world_size") or len(files))
        if expected != len(files) or osp.basename(file) != stage_states_file(stage):
            raise CheckpointError(
                f"{directory} holds {[osp.basename(f) for f in files]} but was written by "
                f"{expected} pipeline stages: it is incomplete (a stage's save did not finish)"
            )
        twice = sorted(set(merged) & set(saved["module"]))
        if twice:
            raise CheckpointError(
                f"{directory}: stages {stage} and an earlier one both hold {twice[:5]}"
            )
        merged.update(saved["module"])
        if stage == 0:
            meta = dict(saved.get("meta") or {})
    meta["pipeline_stages"] = len(files)
    return merged, meta


def checkpoint_meta(path: str) -> dict:
    """The ``meta`` dict of a checkpoint (file or DeepSpeed directory), without reading its
    tensors."""
    file = osp.join(path, MODEL_STATES_FILE) if osp.isdir(path) else path
    saved = safe_load(file, "cpu", mmap=zipfile.is_zipfile(file))
    return dict(saved.get("meta") or {}) if isinstance(saved, dict) else {}


def list_checkpoints(work_dir: str) -> list[str]:
    """The training checkpoints in ``work_dir`` a run can resume: ``epoch_N.pth`` and
    ``iter_N.pth`` (files or DeepSpeed directories), newest first (modification time, then N).
    Not ``best_*.pth`` (weights without optimizer state) and not the hidden partial files of
    :func:`atomic_write`."""
    if not osp.isdir(work_dir):
        return []
    found = []
    for name in os.listdir(work_dir):
        path = osp.join(work_dir, name)
        if _RESUMABLE_NAME.fullmatch(name) and (
            osp.isfile(path) or osp.isfile(osp.join(path, MODEL_STATES_FILE))
        ):
            found.append(path)

    def newest(path: str) -> tuple[float, int]:
        return osp.getmtime(path), int(_RESUMABLE_NAME.fullmatch(osp.basename(path))[2])

    return sorted(found, key=newest, reverse=True)


def recorded_checkpoint(work_dir: str) -> str | None:
    """The path ``last_checkpoint`` names, mapped into ``work_dir`` when the work dir was
    moved or copied (the file records an absolute path) and holds a checkpoint of that name."""
    record = osp.join(work_dir, LAST_CHECKPOINT_FILE)
    if not osp.isfile(record):
        return None
    with open(record) as f:
        recorded = f.read().strip()
    if not recorded:
        return None
    inside = osp.join(work_dir, osp.basename(recorded))
    if osp.abspath(osp.dirname(recorded)) != osp.abspath(work_dir) and osp.exists(inside):
        return inside  # the work dir was moved or copied: resume its own checkpoint
    return recorded


def find_resume_checkpoint(work_dir: str, required: bool = True) -> str | None:
    """The checkpoint to resume from in ``work_dir``: the one ``last_checkpoint`` names when it
    is intact, else the newest intact one (with a warning naming both). No checkpoint at all is
    an error naming the work dir when ``required`` (``--resume``), ``None`` otherwise
    (``--resume auto``: start from scratch when there is nothing yet)."""
    recorded = recorded_checkpoint(work_dir)
    candidates = list_checkpoints(work_dir)
    if recorded is not None:
        candidates = [recorded] + [c for c in candidates if osp.abspath(c) != osp.abspath(recorded)]
    if not candidates:
        if not required:
            print_log(
                f"--resume auto: no checkpoint in {work_dir}; starting from scratch",
                logger="current",
            )
            return None
        raise CheckpointError(
            f"--resume: no checkpoint to resume in work dir {osp.abspath(work_dir)} (no "
            f"{LAST_CHECKPOINT_FILE}, no *.pth). Check --work-dir (a typo starts a new "
            "directory), pass a checkpoint path (--resume PATH), or use --resume auto to start "
            "from scratch when there is none yet."
        )
    problems = []
    for path in candidates:
        # every rank chooses, before a process group exists: read the zip directories only
        # (truncation, a missing or foreign file), not every byte of every partition
        problem = checkpoint_problem(path, verify_data=False)
        if problem is None:
            if problems:
                print_log(
                    f"not resuming from {problems[0][0]}: it {problems[0][1]}. Resuming from "
                    f"{path}, the newest intact checkpoint, instead.",
                    logger="current",
                    level=logging.WARNING,
                )
            return path
        problems.append((path, problem))
    listed = "; ".join(f"{p} {why}" for p, why in problems)
    raise CheckpointError(
        f"--resume: no intact checkpoint in {work_dir} ({listed}). Start again without "
        "--resume (or in a new --work-dir)."
    )


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """Call ``write(partial_path)``, flush it to disk, then rename it to ``path``: a process
    killed mid-write leaves a hidden ``.NAME.partial`` (ignored by :func:`list_checkpoints`),
    never a truncated file under the checkpoint's name, and whoever records ``path`` afterwards
    (``last_checkpoint``) records a complete file."""
    folder, name = osp.split(path)
    partial = osp.join(folder, f".{name}.partial")
    if osp.exists(partial):
        os.remove(partial)
    write(partial)
    with open(partial, "rb") as f:
        os.fsync(f.fileno())
    os.replace(partial, path)
    _fsync_dir(folder)


def _fsync_dir(folder: str) -> None:
    """Persist a rename (the directory entry); not possible on every OS/filesystem."""
    try:
        fd = os.open(folder or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
