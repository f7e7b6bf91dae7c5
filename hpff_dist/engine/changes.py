"""What the run changed in the user's config, as records: which key, old value, new value, why.

:func:`hpff_dist.engine.resolve.resolve_config` makes most changes before the runner exists;
the DeepSpeed strategy makes the rest once the process group exists (the DeepSpeed config it
derives, the optim wrapper it builds). Both report them the same way: every record is logged
(``print_log``, logger ``current``) and rank 0 writes them to ``config_changes.json`` in the
work dir, so nothing the run does to a config is hidden.
"""

from __future__ import annotations

import copy
import json
import os
import os.path as osp
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any

from mmengine.logging import print_log

__all__ = [
    "CHANGES_FILE",
    "UNSET",
    "ChangeRecorder",
    "ConfigChange",
    "log_changes",
    "read_changes",
    "report_changes",
    "write_changes",
]

#: the file in the work dir that lists every change, in the order they were made.
CHANGES_FILE = "config_changes.json"


class _Unset:
    """A key that was absent (as ``old``) or is removed (as ``new``): not the same as ``None``."""

    def __repr__(self) -> str:
        return "<unset>"

    def __reduce__(self) -> str:
        return "UNSET"  # deep copies and pickles keep the one instance


UNSET: Any = _Unset()


@dataclass(frozen=True)
class ConfigChange:
    """One change to the config: ``key`` is a dotted path (``train_cfg.type``), ``old`` and
    ``new`` are values or :data:`UNSET`, ``why`` says what needs it and ``by`` who made it."""

    key: str
    old: Any
    new: Any
    why: str
    by: str = "resolve_config"

    def as_json(self) -> dict[str, Any]:
        """A JSON-ready record; values JSON cannot hold are written as their ``repr``."""
        return {
            "key": self.key,
            "old": _jsonable(self.old),
            "new": _jsonable(self.new),
            "why": self.why,
            "by": self.by,
        }

    def __str__(self) -> str:
        return f"{self.key}: {self.old!r} -> {self.new!r} ({self.why})"


class ChangeRecorder:
    """Makes changes to config mappings and records each one that changes a value."""

    def __init__(self, by: str = "resolve_config") -> None:
        self.by = by
        self.changes: list[ConfigChange] = []

    def set(self, mapping: MutableMapping, key: str, value: Any, why: str, path: str) -> None:
        """``mapping[key] = value``, recorded as ``path`` unless the value is already there."""
        old = mapping[key] if key in mapping else UNSET
        if old is not UNSET and old == value:
            return
        mapping[key] = value
        self.note(path, old, value, why)

    def pop(self, mapping: MutableMapping, key: str, why: str, path: str) -> Any:
        """Remove ``mapping[key]`` (recorded if it was there) and return it, or ``None``."""
        if key not in mapping:
            return None
        value = mapping.pop(key)
        self.note(path, value, UNSET, why)
        return value

    def note(self, path: str, old: Any, new: Any, why: str) -> None:
        """Record a change made elsewhere (values are copied: later edits do not rewrite it)."""
        self.changes.append(
            ConfigChange(path, copy.deepcopy(old), copy.deepcopy(new), why, self.by)
        )


def _jsonable(value: Any) -> Any:
    if value is UNSET:
        return repr(UNSET)
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
    return value


def log_changes(changes: Iterable[ConfigChange]) -> None:
    """Log every change, one line each (``print_log``, logger ``current``)."""
    for change in changes:
        print_log(f"config change by {change.by}: {change}", logger="current")


def write_changes(changes: Iterable[ConfigChange], work_dir: str, append: bool = False) -> str:
    """Write the records to :data:`CHANGES_FILE` in ``work_dir`` (after those already there
    with ``append=True``); returns its path."""
    path = osp.join(work_dir, CHANGES_FILE)
    records = read_changes(work_dir) if append and osp.isfile(path) else []
    os.makedirs(work_dir, exist_ok=True)
    with open(path, "w") as f:
        json.dump(records + [c.as_json() for c in changes], f, indent=1)
    return path


def report_changes(
    changes: Iterable[ConfigChange], work_dir: str | None = None, rank: int = 0
) -> None:
    """What the strategy does with its changes: log them and, on rank 0, append them to the
    work dir's :data:`CHANGES_FILE` after the resolution's."""
    changes = list(changes)
    log_changes(changes)
    if changes and rank == 0 and work_dir:
        write_changes(changes, work_dir, append=True)


def read_changes(work_dir: str) -> list[dict[str, Any]]:
    """The records of :data:`CHANGES_FILE` in ``work_dir``."""
    with open(osp.join(work_dir, CHANGES_FILE)) as f:
        return json.load(f)
