"""A local module as an explicit object: its layers, its heads per level, their weights.

It is a plain object, not an ``nn.Module``: its layers belong to the network and its heads to
the ``LocalLearner``; registering them here too would list parameters twice.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

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


class BlockTap(NamedTuple):
    """A tap as a network sees it: ``head``'s loss, times ``weight``, on the output of
    ``blocks[block]``, logged as ``loss_<name>`` (the learner turns it into a ``ModuleTap`` of
    the module holding that block)."""

    name: str
    block: int
    head: LocalHead
    weight: float = 1.0


@dataclass(eq=False)
class ModuleTap:
    """An extra loss on the output of ``layers[position]`` of a module: a block *inside* it.

    mmseg's auxiliary head reads the end of stage 3, which a split need not put at a module
    boundary. The tap's gradient stays in the module that contains the block (it reaches the
    layers up to ``position``, never the modules before), as every local loss does; E2E
    backpropagates it through everything, as mmseg does. Its head's logits are never taken for
    the task's."""

    name: str
    position: int
    weight: float
    head: LocalHead

    @property
    def active(self) -> bool:
        return self.weight != 0


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
    taps: list[ModuleTap] = field(default_factory=list)

    def __call__(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x

    def forward_tapped(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """The output and, for every active tap, the output of its layer (in ``taps`` order)."""
        taps = [tap for tap in self.taps if tap.active]
        if not taps:
            return self(x), []
        at: dict[int, Tensor] = {}
        wanted = {tap.position for tap in taps}
        for position, layer in enumerate(self.layers):
            x = layer(x)
            if position in wanted:
                at[position] = x
        return x, [at[tap.position] for tap in taps]

    @property
    def active_taps(self) -> list[ModuleTap]:
        return [tap for tap in self.taps if tap.active]

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

    @property
    def learns_itself(self) -> bool:
        """Whether a loss of this module's own (a level or a tap) trains it."""
        return bool(self.active_levels or self.active_taps)

    def parameters(self) -> Iterator[nn.Parameter]:
        for layer in self.layers:
            yield from layer.parameters()
