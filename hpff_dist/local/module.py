"""A local module as an explicit object: its layers, its heads per level, their weights.

It is a plain object, not an ``nn.Module``: its layers belong to the network and its heads to
the ``LocalLearner``; registering them here too would list parameters twice.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from torch import Tensor, nn

from hpff_dist.local.heads import LocalHead


@dataclass(eq=False)
class ModuleLevel:
    """One level at one module: its ``head`` (None: the level skips this module), ``weight``
    and ``span`` (1: gradient stays in the module; 2: it also reaches the module before)."""

    name: str
    span: int
    weight: float
    head: LocalHead | None

    @property
    def active(self) -> bool:
        return self.head is not None and self.weight != 0


@dataclass(eq=False)
class LocalModule:
    """Module ``index`` of the split: ``layers`` run in order (module 0 starts with the stem).

    Each level's head sees the module's output; a span-1 level's gradient stays in this
    module, a span-2 (cascade) level's also reaches module ``index - 1``.
    """

    index: int
    layers: list[nn.Module]
    levels: list[ModuleLevel] = field(default_factory=list)
    is_last: bool = False

    def __call__(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x

    def level(self, name: str) -> ModuleLevel | None:
        return next((lv for lv in self.levels if lv.name == name), None)

    def _head(self, name: str) -> LocalHead | None:
        lv = self.level(name)
        return lv.head if lv is not None else None

    @property
    def ind_head(self) -> LocalHead | None:
        """The independent level's head (``'ind'``), if this module has one."""
        return self._head("ind")

    @property
    def cas_head(self) -> LocalHead | None:
        """The cascade level's head (``'cas'``), if this module has one."""
        return self._head("cas")

    @property
    def active_levels(self) -> list[ModuleLevel]:
        return [lv for lv in self.levels if lv.active]

    @property
    def sends_cascade(self) -> bool:
        """Whether a loss of this module reaches the previous module (an active span-2 level)."""
        return self.index > 0 and any(lv.span == 2 for lv in self.active_levels)

    def parameters(self) -> Iterator[nn.Parameter]:
        for layer in self.layers:
            yield from layer.parameters()
