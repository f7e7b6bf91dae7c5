"""A local module as an explicit object: its layers, its heads, its loss weights.

It is a plain object, not an ``nn.Module``: its layers belong to the network and its heads to
the ``LocalLearner``; registering them here too would list parameters twice.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from torch import Tensor, nn

from hpff_dist.local.heads import LocalHead


@dataclass(eq=False)
class LocalModule:
    """Module ``index`` of the split: ``layers`` run in order (module 0 starts with the stem).

    ``ind_head`` (independent level, weight ``w_ind``) sees the module's output computed from a
    detached input; ``cas_head`` (cascade level, weight ``w_cas``) the same output seen as the
    end of the cascade E_{i-1} -> E_i, so its gradient also reaches module ``index - 1``.
    A level is active when its head exists and its weight is non-zero.
    """

    index: int
    layers: list[nn.Module]
    ind_head: LocalHead | None
    cas_head: LocalHead | None
    w_ind: float
    w_cas: float
    is_last: bool

    def __call__(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x

    @property
    def ind_active(self) -> bool:
        return self.ind_head is not None and self.w_ind != 0

    @property
    def cas_active(self) -> bool:
        return self.cas_head is not None and self.w_cas != 0

    @property
    def sends_cascade(self) -> bool:
        """Whether this module's cascade loss reaches the previous module."""
        return self.index > 0 and self.cas_active

    def parameters(self) -> Iterator[nn.Parameter]:
        for layer in self.layers:
            yield from layer.parameters()
