"""The backward contract between schedules and the training engine.

Schedules never call ``.backward()`` themselves for anything that fills parameter gradients:
the engine owns that call (mmengine's optim wrapper, an AMP scaler, DeepSpeed), because it may
scale the loss, accumulate gradients or synchronise ranks. A schedule receives a ``Backward``
and must know its ``scale`` so that cotangents read back from ``.grad`` of detached leaves can
be un-scaled before they are fed into the next surrogate loss.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class Backward(Protocol):
    """``backward(loss)`` accumulates ``scale * d loss / d theta`` into every ``theta.grad``."""

    scale: float

    def __call__(self, loss: Tensor) -> None: ...


class PlainBackward:
    """``loss.backward()``: the default when no engine is involved."""

    scale: float = 1.0

    def __call__(self, loss: Tensor) -> None:
        loss.backward()


class ScaledBackward:
    """``(loss * scale).backward()``: what an AMP loss scaler does; used to test the contract."""

    def __init__(self, scale: float) -> None:
        self.scale = float(scale)

    def __call__(self, loss: Tensor) -> None:
        (loss * self.scale).backward()
