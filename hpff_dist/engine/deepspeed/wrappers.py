"""The optim wrapper and model wrapper that let a DeepSpeed engine run our multi-backward step.

mmengine's DeepSpeed classes are the base; importing them does not import DeepSpeed itself
(see ``hpff_dist.compat.defer_deepspeed_import_in_mmengine``), so the registries can list this
module in ``locations`` at no cost.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import nn

from hpff_dist.engine.mmengine_runner import DeepSpeedOptimWrapper, MMDeepSpeedEngineWrapper
from hpff_dist.models.local_step import LossBackward
from hpff_dist.registry import MODEL_WRAPPERS, OPTIM_WRAPPERS

__all__ = ["LocalDeepSpeedEngineWrapper", "LocalDeepSpeedOptimWrapper"]


@OPTIM_WRAPPERS.register_module()
class LocalDeepSpeedOptimWrapper(DeepSpeedOptimWrapper):
    """mmengine optim wrapper over a DeepSpeed engine for train steps with several backward
    calls: ``backward`` accumulates, ``step`` applies once every ``accumulation_steps`` calls,
    ``zero_grad`` is a no-op (the engine clears gradients after it steps), and
    :meth:`loss_backward` tells the schedule DeepSpeed's gradient factor (1/accumulation)."""

    def __init__(self, optimizer: torch.optim.Optimizer, accumulation_steps: int = 1) -> None:
        super().__init__(optimizer)
        self.accumulation_steps = int(accumulation_steps)
        self._calls = 0

    def loss_backward(self) -> LossBackward:
        """The multi-backward hook of ``hpff_dist.models.local_step``: ``engine.backward`` divides
        every loss by the accumulation steps (``scale_wrt_gas``), bf16/fp32 scale no further."""
        return LossBackward(self, 1.0 / self.accumulation_steps)

    def backward(self, loss: torch.Tensor, **kwargs: Any) -> None:
        self.model.backward(loss, **kwargs)

    def step(self, **kwargs: Any) -> None:
        self._calls += 1
        if self._calls % self.accumulation_steps == 0:
            self.model.step()

    def zero_grad(self, **kwargs: Any) -> None:
        """DeepSpeed zeroes (or re-partitions) gradients inside ``engine.step``; clearing them
        here between micro-batches would break accumulation."""

    def update_params(self, loss: torch.Tensor, **kwargs: Any) -> None:  # type: ignore[override]
        self.backward(loss)
        self.step()

    def optim_context(self, model: nn.Module) -> AbstractContextManager:
        return nullcontext()

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["accumulation_calls"] = self._calls
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        self._calls = int(state_dict.pop("accumulation_calls", 0))
        super().load_state_dict(state_dict)


@MODEL_WRAPPERS.register_module()
class LocalDeepSpeedEngineWrapper(MMDeepSpeedEngineWrapper):
    """Runs the model's own ``train_step`` (the local-learning schedule) against the DeepSpeed
    optim wrapper, instead of mmengine's single-loss forward + ``update_params``. Models without
    their own ``train_step`` get BaseModel's, which ends in ``update_params`` and works too."""

    def __init__(self, *, model: Any, inputs_to_half: list | None = None) -> None:
        super().__init__(model=model, inputs_to_half=inputs_to_half)
        self._cast_handle = None
        dtype = next(model.module.parameters()).dtype
        preprocessor = getattr(model.module, "data_preprocessor", None)
        if dtype != torch.float32 and isinstance(preprocessor, nn.Module):
            # DeepSpeed bf16 casts the module's parameters; the schedule feeds it what the data
            # preprocessor returns, so cast floating outputs there, once, for every step kind.
            self._cast_handle = preprocessor.register_forward_hook(_cast_floats_hook(dtype))

    @property
    def module(self) -> nn.Module:
        return self.model.module

    def train_step(self, data: Any, optim_wrapper: LocalDeepSpeedOptimWrapper) -> dict:
        return self.model.module.train_step(data, optim_wrapper)

    def val_step(self, data: Any) -> list:
        return self.model.module.val_step(data)

    def test_step(self, data: Any) -> list:
        return self.model.module.test_step(data)


def _cast_floats_hook(dtype: torch.dtype):
    def cast(obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            return obj.to(dtype) if obj.is_floating_point() else obj
        if isinstance(obj, dict):
            return {k: cast(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
            return type(obj)(cast(v) for v in obj)
        return obj

    def hook(module: nn.Module, args: Any, output: Any) -> Any:
        return cast(output)

    return hook
