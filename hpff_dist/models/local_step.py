"""How a local-learning train step reaches an optimizer wrapper's backward.

Local learning makes several backward calls per optimizer step. The schedules in
``hpff_dist.local`` never call ``.backward()`` themselves for anything that fills parameter
gradients: they are handed a :class:`LossBackward` (``__call__(loss)`` plus ``scale``, the factor
by which that backward multiplies gradients: AMP loss scale, DeepSpeed's 1/accumulation) so
cotangents they read back can be unscaled before being re-used. This module builds that object
for any optimizer wrapper; wrappers of ours may provide ``loss_backward()`` themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from mmengine.optim import AmpOptimWrapper, OptimWrapper
from torch import Tensor

from hpff_dist.local.backward import tensor_backward_kwargs

# Wrappers whose ``backward(loss, **kwargs)`` is ``Tensor.backward(**kwargs)`` of the (scaled)
# loss, so a tensor output with ``gradient=`` and ``inputs=`` can go through them unchanged.
_TENSOR_BACKWARDS = (OptimWrapper.backward, AmpOptimWrapper.backward)


@dataclass
class LossBackward:
    """Backward through an optimizer wrapper; ``scale`` is what it multiplies gradients by."""

    wrapper: Any
    scale: float = 1.0
    tensor_backward: bool = False

    def __call__(self, loss: Tensor) -> None:
        self.wrapper.backward(loss)

    def vjp(self, output: Tensor, cotangent: Tensor, inputs: Sequence[Tensor] | None) -> None:
        """``hpff_dist.local.backward.backward_vjp`` through the wrapper: a tensor backward
        when the wrapper passes ``Tensor.backward`` keyword arguments on, else the surrogate."""
        if not self.tensor_backward:
            self((output * cotangent).sum())
            return
        if self.scale != 1.0 and output.dtype in (torch.float16, torch.bfloat16):
            # The scaler multiplies the output, and autograd casts the float32 cotangent to the
            # output's dtype before that: at true size it would underflow in float16. Scale in
            # float32 instead, as the surrogate (promoted to float32) does; the cast saves nothing.
            output = output.float()
        self.wrapper.backward(output, **tensor_backward_kwargs(cotangent, inputs))


def loss_backward(optim_wrapper: Any) -> LossBackward:
    """The :class:`LossBackward` for an mmengine optim wrapper (plain, AMP or ours)."""
    own = getattr(optim_wrapper, "loss_backward", None)
    if callable(own):
        return own()
    tensor_backward = getattr(type(optim_wrapper), "backward", None) in _TENSOR_BACKWARDS
    scaler = getattr(optim_wrapper, "loss_scaler", None)
    scaled = scaler is not None and hasattr(scaler, "get_scale") and scaler.is_enabled()
    scale = float(scaler.get_scale()) if scaled else 1.0
    return LossBackward(optim_wrapper, scale, tensor_backward)
