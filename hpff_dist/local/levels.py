"""Local levels as data: what trains each local module, and how far its gradient reaches.

HPFF's HiLo has two levels: *independent* (``'ind'``: module i on its detached input, span 1)
and *cascade* (``'cas'``: modules i-1 and i trained together, span 2). DGL and InfoPro are the
independent level alone. A level is a name, a span, a weight and an aux-head config (built
per module through ``hpff_dist.local.registry.HEADS``); the last module trains through the
task's own head on the levels that say so. Presets are tuples of these (``spec.py``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from typing import Any

#: spans the one-forward schedule supports: it keeps at most two module graphs alive.
SPANS = (1, 2)


@dataclass(frozen=True)
class Level:
    """One local level.

    ``name``: short key used in heads (``'cas3'``) and logs (``loss_cas``, ``m03/cas``).
    ``span``: 1 = the module alone; 2 = the module and the one before it (a cascade).
    ``weight``: the level's loss weight (0 switches it off). ``head``: the aux head config
    of modules 0..K-2 (``dict(type=..., ...)``), None for a level carried only by the task
    head. ``first_module``: module 0 (with the stem) has this level's own head.
    ``last_module``: the last module trains on this level through the task's head.
    """

    name: str
    span: int
    weight: float
    head: dict[str, Any] | None = None
    first_module: bool = True
    last_module: bool = True

    def __post_init__(self) -> None:
        if not self.name or not self.name.isidentifier() or self.name[-1].isdigit():
            # Heads are keyed name + module index ('cas3'): a trailing digit could collide.
            raise ValueError(
                f"level name must be an identifier not ending in a digit, got {self.name!r}"
            )
        if self.span not in SPANS:
            raise ValueError(
                f"level {self.name!r}: span must be one of {SPANS} (the one-forward schedule "
                f"keeps at most two module graphs), got {self.span}"
            )
        if self.head is not None and (not isinstance(self.head, dict) or "type" not in self.head):
            raise TypeError(
                f"level {self.name!r}: head must be a registry config dict with a 'type', "
                f"got {self.head!r}"
            )

    @property
    def active(self) -> bool:
        return self.weight != 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def level_from(value: Level | dict[str, Any]) -> Level:
    """A ``Level`` from itself or from its dict (``levels=[dict(name='ind', span=1, ...)]``)."""
    if isinstance(value, Level):
        return value
    if not isinstance(value, dict):
        raise TypeError("a level is a dict like dict(name='ind', span=1, weight=1.0, head=...)")
    refuse_unknown_keys("level", value, {f.name for f in fields(Level)})
    return Level(**value)


def refuse_unknown_keys(kind: str, given: Iterable[str], valid: Iterable[str]) -> None:
    """Raise ``ValueError`` naming the keys of ``given`` not in ``valid``, and the valid ones."""
    valid = set(valid)
    unknown = set(given) - valid
    if unknown:
        raise ValueError(f"unknown {kind} keys {sorted(unknown)}; valid keys: {sorted(valid)}")


def check_levels(levels: tuple[Level, ...]) -> None:
    names = [lv.name for lv in levels]
    if len(set(names)) != len(names):
        raise ValueError(f"level names must be unique, got {names}")
    if levels and not any(lv.active for lv in levels):
        raise ValueError(f"every level weight is 0 ({names}): no module would receive a gradient")
