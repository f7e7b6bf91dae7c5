"""How a local-learning train step reaches an optimizer wrapper's backward.

Local learning makes several backward calls per optimizer step. The schedules in
``hpff_dist.local`` never call ``.backward()`` themselves for anything that fills parameter
gradients: they are handed a :class:`LossBackward` (``__call__(loss)`` plus ``scale``, the factor
by which that backward multiplies gradients: AMP loss scale, DeepSpeed's 1/accumulation) so
cotangents they read back can be unscaled before being re-used. This module builds that object
for any optimizer wrapper; wrappers of ours may provide ``loss_backward()`` themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor


@dataclass
class LossBackward:
    """Backward through an optimizer wrapper; ``scale`` is what it multiplies gradients by."""

    wrapper: Any
    scale: float = 1.0

    def __call__(self, loss: Tensor) -> None:
        self.wrapper.backward(loss)


def loss_backward(optim_wrapper: Any) -> LossBackward:
    """The :class:`LossBackward` for an mmengine optim wrapper (plain, AMP or ours)."""
    own = getattr(optim_wrapper, "loss_backward", None)
    if callable(own):
        return own()
    scaler = getattr(optim_wrapper, "loss_scaler", None)
    if scaler is not None and hasattr(scaler, "get_scale") and scaler.is_enabled():
        return LossBackward(optim_wrapper, float(scaler.get_scale()))
    return LossBackward(optim_wrapper, 1.0)
