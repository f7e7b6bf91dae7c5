"""The one local-learning train step every model shares, and its adapter to the engine.

``LocalTrainStepMixin.train_step`` is the whole step for any task: preprocess the batch, run
the learner's schedule (several backward calls through the optim wrapper), one optimizer
step, log the losses; the task (classification now, dense prediction next) only adds its own
log values through ``task_log_vars`` and supplies the heads and targets.

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
from hpff_dist.local.schedule import StepOutput

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


class LocalTrainStepMixin:
    """``train_step`` for an mmengine ``BaseModel`` that holds a ``LocalLearner`` as
    ``self.learner``: exactly one optimizer step per batch, so mmengine's loops, hooks, AMP and
    our DeepSpeed strategy all see an ordinary train step.

    The data preprocessor returns ``dict(inputs=..., targets=..., images=...)``: ``inputs``
    feed the network, ``targets`` go to the heads untouched (labels, label maps, data
    samples), ``images`` (the restored input) to heads that declare they need it.
    """

    learner: Any
    data_preprocessor: Any
    #: the last step's loss of every local module and level (``'m03/ind'``), detached, set by
    #: ``train_step``; read by ``hpff_dist.engine.local_curves.LocalLossCurvesHook``.
    local_losses: dict[str, Tensor]

    def train_step(self, data: Any, optim_wrapper: Any) -> dict[str, Tensor]:
        counts = getattr(optim_wrapper, "_accumulative_counts", 1)
        if counts != 1 and getattr(optim_wrapper, "loss_backward", None) is None:
            # mmengine's OptimWrapper counts backward calls, not steps, and ``step()`` ignores
            # the count: with several backward calls per step accumulation would be wrong.
            raise ValueError(
                f"optim_wrapper.accumulative_counts={counts} is not supported by the single-process "
                "local-learning step; use strategy=dict(type='LocalDeepSpeedStrategy', "
                "gradient_accumulation_steps=N) or a larger batch"
            )
        backward = loss_backward(optim_wrapper)
        with optim_wrapper.optim_context(self):
            batch = self.data_preprocessor(data, True)
            out = self.learner.train_step_losses(
                batch["inputs"], batch["targets"], batch.get("images"), backward
            )
        optim_wrapper.step()
        optim_wrapper.zero_grad()
        # Per-module losses stay out of the text log (2K values a step) and go to hooks.
        self.local_losses = {
            f"m{index:02d}/{key.removeprefix('loss_')}": value
            for index, losses in enumerate(out.per_module)
            for key, value in losses.items()
        }
        log_vars = {k: v.detach() for k, v in out.losses.items()}
        log_vars.update(self.task_log_vars(out, batch))
        return log_vars

    def task_log_vars(self, out: StepOutput, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Task-specific values to log for this step (e.g. training accuracy)."""
        return {}
