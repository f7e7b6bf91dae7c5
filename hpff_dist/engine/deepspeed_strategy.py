"""DeepSpeed ZeRO under mmengine's FlexibleRunner, exact for several backward calls per step.

Local learning calls backward once per module (and reads input cotangents with
``torch.autograd.grad`` in between) before one optimizer step. DeepSpeed's default *managed*
gradient accumulation treats every ``engine.backward`` as a micro-batch boundary; at ZeRO-1/2
with ``gradient_accumulation_steps=1`` that keeps only the last backward's gradients, with no
error (measured on DeepSpeed 0.19.8, and kept as a regression test). We therefore always run
DeepSpeed with ``"managed_gradient_accumulation": false``: ``engine.backward`` only accumulates
locally (stage 2 reduce-scatters into its partition with accumulation), and ``engine.step`` is
the boundary that reduces what is left and updates. That is exact at ZeRO 0, 1 and 2, fp32 and
bf16. ZeRO-3 is refused: its parameters exist only while the engine's forward hooks gather them,
and the local schedules call blocks directly and backward several times; a second backward
crashed it in our checks (``coalesce_grad_reduction`` does not help there either).

Batch semantics, stated once: **global batch = per-device batch x world size x accumulation
steps**. The per-device batch is ``train_dataloader.batch_size``; numbers that do not fit raise
:class:`BatchConfigError`.
"""

from __future__ import annotations

import os
import os.path as osp
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
import torch.distributed as torch_dist
from mmengine.logging import print_log
from mmengine.optim import BaseOptimWrapper
from torch import nn

from hpff_dist import compat
from hpff_dist.engine.backward import LossBackward
from hpff_dist.engine.launchers import check_launcher, enable, resolve_backend
from hpff_dist.registry import MODEL_WRAPPERS, OPTIM_WRAPPERS, STRATEGIES

try:  # mmengine's module imports deepspeed; keep the package importable without it.
    from mmengine._strategy.deepspeed import (
        DeepSpeedOptimWrapper,
        DeepSpeedStrategy,
        MMDeepSpeedEngineWrapper,
    )
except ImportError:  # pragma: no cover - deepspeed is pinned in requirements
    DeepSpeedOptimWrapper = DeepSpeedStrategy = MMDeepSpeedEngineWrapper = object  # type: ignore
else:
    compat.register_deepspeed_optimizers_once()

__all__ = [
    "BatchConfigError",
    "DeepSpeedConfigError",
    "LocalDeepSpeedOptimWrapper",
    "LocalDeepSpeedEngineWrapper",
    "LocalDeepSpeedStrategy",
    "resolve_batch_config",
    "validate_deepspeed_config",
    "average_bn_buffers",
]

# Where DeepSpeed writes the (full, at stage <= 2) module state inside a checkpoint directory.
MODEL_STATES_FILE = "mp_rank_00_model_states.pt"


class BatchConfigError(ValueError):
    """Per-device batch, world size, accumulation and global batch do not multiply out."""


class DeepSpeedConfigError(ValueError):
    """A DeepSpeed setting that would train the wrong thing or conflicts with ours."""


def resolve_batch_config(
    per_device: int,
    world_size: int,
    accumulation: int = 1,
    global_batch: int | None = None,
    ds_config: Mapping[str, Any] | None = None,
) -> dict[str, int]:
    """Check global = per_device x world_size x accumulation against every place a user can
    state one of them (our ``global_batch_size``, DeepSpeed's ``train_batch_size`` and
    ``train_micro_batch_size_per_gpu``) and return DeepSpeed's three batch keys."""
    ds_config = ds_config or {}
    if per_device < 1 or world_size < 1 or accumulation < 1:
        raise BatchConfigError(
            f"per-device batch ({per_device}), world size ({world_size}) and accumulation "
            f"steps ({accumulation}) must all be >= 1"
        )
    product = per_device * world_size * accumulation
    formula = (
        f"per-device batch {per_device} x world size {world_size} x accumulation steps "
        f"{accumulation} = {product}"
    )
    micro = ds_config.get("train_micro_batch_size_per_gpu")
    if micro not in (None, "auto") and int(micro) != per_device:
        raise BatchConfigError(
            f"DeepSpeed train_micro_batch_size_per_gpu={micro} conflicts with "
            f"train_dataloader.batch_size={per_device} (the per-device batch); set only one"
        )
    for name, value in (
        ("global_batch_size", global_batch),
        ("DeepSpeed train_batch_size", ds_config.get("train_batch_size")),
    ):
        if value not in (None, "auto") and int(value) != product:
            raise BatchConfigError(f"{name}={value} but {formula}")
    return {
        "train_micro_batch_size_per_gpu": per_device,
        "gradient_accumulation_steps": accumulation,
        "train_batch_size": product,
    }


def per_device_batch(global_batch: int, world_size: int, accumulation: int = 1) -> int:
    """The per-device batch for a global batch, or :class:`BatchConfigError` naming the numbers
    when the world size x accumulation does not divide it."""
    denom = world_size * accumulation
    if global_batch % denom != 0:
        raise BatchConfigError(
            f"global_batch_size={global_batch} is not divisible by world size {world_size} x "
            f"accumulation steps {accumulation} = {denom}"
        )
    return global_batch // denom


def validate_deepspeed_config(config: dict[str, Any]) -> dict[str, Any]:
    """Refuse what is not exact for multi-backward steps, fill what DeepSpeed would default
    wrongly for us; returns ``config`` (modified in place)."""
    zero = config.get("zero_optimization") or {}
    stage = int(zero.get("stage", 0))
    if stage >= 3:
        raise DeepSpeedConfigError(
            "ZeRO stage 3 is not supported for local learning: stage 3 keeps each parameter "
            "partitioned and gathers it only inside the DeepSpeed engine's forward hooks, while "
            "our train steps call blocks directly and make several backward calls per step "
            "(a second backward through a retained graph crashed ZeRO-3 on DeepSpeed 0.19.8). "
            "Use stage 2 (gradients and optimizer states partitioned) instead."
        )
    if (config.get("fp16") or {}).get("enabled", False) or (config.get("amp") or {}).get(
        "enabled", False
    ):
        raise DeepSpeedConfigError(
            "fp16/amp is not supported with several backward calls per step: the dynamic loss "
            "scale can change (and skip the step) between them, so cotangents read back from one "
            "backward would be unscaled with the wrong factor. Use bf16=dict(enabled=True) "
            "(no loss scaling) or fp32."
        )
    if config.get("managed_gradient_accumulation", False):
        raise DeepSpeedConfigError(
            "managed_gradient_accumulation=true treats every engine.backward as a micro-batch; "
            "with several backward calls per step ZeRO-1/2 keep only the last one's gradients. "
            "Remove the key: LocalDeepSpeedStrategy sets it to false and calls engine.step once "
            "per accumulation boundary."
        )
    config["managed_gradient_accumulation"] = False
    if stage == 1 and zero.get("overlap_comm", False):
        raise DeepSpeedConfigError(
            "zero_optimization.overlap_comm=true needs stage 2 with unmanaged accumulation "
            "(DeepSpeed asserts otherwise); drop it or use stage 2"
        )
    # DeepSpeed clips the global gradient norm at 1.0 when this key is absent; a config that
    # says nothing about clipping must not clip.
    config.setdefault("gradient_clipping", 0.0)
    # SGD/AdamW from torch are "untested" for ZeRO by DeepSpeed's allow-list, but they see
    # plain fp32 flat partitions; without this DeepSpeed refuses them.
    config.setdefault("zero_allow_untested_optimizer", True)
    return config


def average_bn_buffers(module: nn.Module) -> int:
    """Average BatchNorm running statistics over ranks in place; returns how many were synced.

    Each rank normalises with its own shard's statistics, so running means/variances drift
    apart. Before a checkpoint is written (DeepSpeed writes rank 0's module) we replace them on
    every rank by the mean over ranks: what is saved is the same whichever rank wrote it, and a
    resumed run starts from the buffers the uninterrupted run continues with. Training-mode
    outputs and gradients do not depend on running statistics, so parameters are unaffected."""
    if not (torch_dist.is_available() and torch_dist.is_initialized()):
        return 0
    world = torch_dist.get_world_size()
    if world == 1:
        return 0
    tensors = []
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats:
            tensors += [t for t in (m.running_mean, m.running_var) if t is not None]
    if not tensors:
        return 0
    flat = torch.cat([t.detach().reshape(-1).double() for t in tensors])
    if torch.cuda.is_available() and torch_dist.get_backend() == "nccl":
        flat = flat.cuda()
    torch_dist.all_reduce(flat)
    flat = (flat / world).cpu()
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset : offset + n].view_as(t).to(t.dtype))
        offset += n
    return len(tensors)


def _state_shapes(state: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items() if hasattr(v, "shape")}


def check_same_model(saved: Mapping[str, Any], module: nn.Module, source: str) -> None:
    """Raise a readable error when a checkpoint's module state is from another model."""
    ours, theirs = _state_shapes(module.state_dict()), _state_shapes(saved)
    missing = sorted(set(ours) - set(theirs))
    unexpected = sorted(set(theirs) - set(ours))
    shapes = sorted(k for k in set(ours) & set(theirs) if ours[k] != theirs[k])
    if missing or unexpected or shapes:

        def show(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f" ... ({len(keys)} total)" if len(keys) > 5 else "")

        parts = []
        if missing:
            parts.append(f"missing keys: {show(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {show(unexpected)}")
        if shapes:
            parts.append(
                "shape mismatch: " + ", ".join(f"{k} {theirs[k]} vs {ours[k]}" for k in shapes[:5])
            )
        raise ValueError(
            f"checkpoint {source} was saved from a different model than "
            f"{type(module).__name__} built from this config ({'; '.join(parts)})"
        )


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
        """The multi-backward hook of ``hpff_dist.engine.backward``: ``engine.backward`` divides
        every loss by the accumulation steps (``scale_wrt_gas``), bf16/fp32 scale no further."""
        return LossBackward(self, 1.0 / self.accumulation_steps)

    def backward(self, loss: torch.Tensor, **kwargs: Any) -> None:
        self.model.backward(loss, **kwargs)

    def step(self, **kwargs: Any) -> None:
        self._calls += 1
        if self._calls % self.accumulation_steps == 0:
            self.model.step()

    def should_update(self) -> bool:
        """Whether the next :meth:`step` applies the update (end of an accumulation window)."""
        return (self._calls + 1) % self.accumulation_steps == 0

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


@STRATEGIES.register_module()
class LocalDeepSpeedStrategy(DeepSpeedStrategy):
    """mmengine's DeepSpeed strategy made exact for local learning (see the module docstring).

    Config keys (``strategy=dict(type='LocalDeepSpeedStrategy', ...)``):
        zero_optimization: ``dict(stage=0|1|2, ...)``; stage 3 is refused.
        bf16: ``dict(enabled=True)`` for bfloat16 parameters/activations (fp32 master weights
            and reductions stay DeepSpeed's); fp16 is refused.
        gradient_clipping: max global L2 norm; absent means **no clipping** (DeepSpeed would
            clip at 1.0). ``optim_wrapper.clip_grad=dict(max_norm=x)`` is accepted as the same
            thing so single-process configs carry over; both set differently is an error.
        gradient_accumulation_steps: micro-batches per optimizer step (default 1).
        global_batch_size: optional; must equal per-device batch x world size x accumulation.
        sync_bn: convert BatchNorm to SyncBatchNorm (GPU only; torch has no CPU SyncBatchNorm).
        config: a DeepSpeed JSON dict/path; keys above override it.
    """

    def __init__(
        self,
        *,
        global_batch_size: int | None = None,
        sync_bn: bool = False,
        **kwargs: Any,
    ) -> None:
        env = dict(kwargs.get("env_kwargs") or {})
        check_launcher(env.get("launcher") or "none", os.environ)
        # mmengine's default dist_cfg says nccl; on a CPU-only host that cannot work.
        dist_cfg = dict(env.get("dist_cfg") or {})
        dist_cfg["backend"] = resolve_backend(dist_cfg.get("backend"))
        env["dist_cfg"] = dist_cfg
        kwargs["env_kwargs"] = env
        self._explicit_clip = kwargs.get("gradient_clipping") is not None
        super().__init__(**kwargs)
        if "gradient_clipping" in self.config:
            self._explicit_clip = True
        validate_deepspeed_config(self.config)
        self.global_batch_size = global_batch_size
        self.sync_bn = sync_bn

    def _setup_distributed(self, launcher: str | None = None, backend: str = "gloo", **kwargs):
        """Our launchers (SLURM mapping, backend by hardware) then ``deepspeed.comm``."""
        enable(launcher or "none", backend=backend, init_backend="deepspeed")

    def build_optim_wrapper(self, optim_wrapper: Any, model: nn.Module | None = None):
        """Build our wrapper whatever wrapper type the (single-process) config names, moving
        ``clip_grad`` and ``accumulative_counts`` into DeepSpeed's config."""
        if isinstance(optim_wrapper, BaseOptimWrapper):
            raise DeepSpeedConfigError(
                "pass optim_wrapper as a config dict; LocalDeepSpeedStrategy builds its own wrapper"
            )
        cfg = dict(optim_wrapper)
        kind = cfg.pop("type", "OptimWrapper")
        name = kind if isinstance(kind, str) else kind.__name__
        if name == "AmpOptimWrapper":
            raise DeepSpeedConfigError(
                "AmpOptimWrapper under DeepSpeed: set strategy bf16=dict(enabled=True) instead"
            )
        if name not in ("OptimWrapper", "DeepSpeedOptimWrapper", "LocalDeepSpeedOptimWrapper"):
            raise DeepSpeedConfigError(f"optim wrapper {name} cannot drive a DeepSpeed engine")
        clip = cfg.pop("clip_grad", None)
        if clip is not None:
            if clip.get("type", "norm") != "norm" or float(clip.get("norm_type", 2)) != 2.0:
                raise DeepSpeedConfigError(
                    f"DeepSpeed clips by global L2 norm only; clip_grad={clip} cannot be honoured"
                )
            max_norm = float(clip["max_norm"])
            if self._explicit_clip and float(self.config["gradient_clipping"]) != max_norm:
                raise DeepSpeedConfigError(
                    f"optim_wrapper.clip_grad.max_norm={max_norm} conflicts with strategy "
                    f"gradient_clipping={self.config['gradient_clipping']}; set one of them"
                )
            self.config["gradient_clipping"] = max_norm
        counts = cfg.pop("accumulative_counts", None)
        gas = int(self.config.get("gradient_accumulation_steps", 1))
        if counts is not None and int(counts) != 1:
            if gas not in (1, int(counts)):
                raise DeepSpeedConfigError(
                    f"optim_wrapper.accumulative_counts={counts} conflicts with "
                    f"gradient_accumulation_steps={gas}"
                )
            self.config["gradient_accumulation_steps"] = gas = int(counts)
        cfg.pop("accumulation_steps", None)
        cfg["type"] = LocalDeepSpeedOptimWrapper
        cfg["accumulation_steps"] = gas
        return super().build_optim_wrapper(cfg, model)

    def _dist_world_size(self) -> int:
        if torch_dist.is_available() and torch_dist.is_initialized():
            return torch_dist.get_world_size()
        return 1

    def _wrap_model(self, model: nn.Module) -> LocalDeepSpeedEngineWrapper:
        import deepspeed

        if not (torch_dist.is_available() and torch_dist.is_initialized()):
            # DeepSpeed needs a process group even for one process.
            enable(
                "none",
                backend=self._env_kwargs.get("dist_cfg", {}).get("backend"),
                init_backend="deepspeed",
                single_process_group=True,
            )
        per_device = (self.dispatch_kwargs or {}).get("train_micro_batch_size_per_gpu")
        if per_device is None:
            per_device = self.config.get("train_micro_batch_size_per_gpu", 1)
        self.config.update(
            resolve_batch_config(
                int(per_device),
                self._dist_world_size(),
                int(self.config.get("gradient_accumulation_steps", 1)),
                self.global_batch_size,
                self.config,
            )
        )
        if (self.config.get("bf16") or {}).get("enabled", False) and not torch.cuda.is_available():
            # DeepSpeed 0.19 casts parameters to bf16 but keeps buffers fp32; CUDA BatchNorm
            # accepts that mix, CPU BatchNorm does not, so on CPU buffers follow the parameters.
            self.config.setdefault("data_types", {}).setdefault("buffer_dtype", "bf16")
        if self.sync_bn:
            if not torch.cuda.is_available():
                raise DeepSpeedConfigError("sync_bn needs GPUs: torch has no CPU SyncBatchNorm")
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        if not hasattr(self, "optim_wrapper"):
            engine, *_ = deepspeed.initialize(model=model, config=self.config)
        else:
            engine, optimizer, *_ = deepspeed.initialize(
                model=model, optimizer=self.optim_wrapper.optimizer, config=self.config
            )
            self.optim_wrapper.optimizer = optimizer
        if torch_dist.get_rank() == 0:
            zero = self.config.get("zero_optimization") or {}
            print_log(
                f"DeepSpeed: ZeRO stage {int(zero.get('stage', 0))}, "
                f"bf16={bool((self.config.get('bf16') or {}).get('enabled', False))}, "
                f"global batch {self.config['train_batch_size']} = per-device "
                f"{self.config['train_micro_batch_size_per_gpu']} x world {self._dist_world_size()} x "
                f"accumulation {self.config['gradient_accumulation_steps']}, "
                f"gradient_clipping={self.config['gradient_clipping']}",
                logger="current",
            )
        return LocalDeepSpeedEngineWrapper(model=engine, inputs_to_half=self._inputs_to_half)

    def save_checkpoint(self, filename: str, **kwargs: Any) -> None:
        """Average BatchNorm buffers over ranks (see :func:`average_bn_buffers`), then
        mmengine's DeepSpeed save: a directory ``filename`` with the module (from rank 0), each
        rank's optimizer partition, and mmengine's meta/message hub/scheduler state."""
        average_bn_buffers(self.model.module)
        super().save_checkpoint(filename, **kwargs)

    def _check_checkpoint(self, filename: str) -> None:
        if osp.isfile(filename):
            raise ValueError(
                f"{filename} is a single-file checkpoint (single-process Runner); DeepSpeed "
                "checkpoints are directories. Resume it with the same launcher/strategy it was "
                "written by, or start from it with the single-process runner."
            )
        states = osp.join(filename, MODEL_STATES_FILE)
        if not osp.isfile(states):
            raise FileNotFoundError(
                f"{filename} is not a DeepSpeed checkpoint directory (no {MODEL_STATES_FILE})"
            )
        # DeepSpeed loads this same file with weights_only=False right after; we only look at
        # its module state first so a wrong model fails with names, not a size mismatch.
        saved = torch.load(states, map_location="cpu", weights_only=False)
        check_same_model(saved.get("module", {}), self.model.module, filename)

    def load_checkpoint(self, filename: str, **kwargs: Any) -> dict:
        self._check_checkpoint(filename)
        return super().load_checkpoint(filename, **kwargs)

    def resume(self, filename: str, **kwargs: Any) -> dict:
        self._check_checkpoint(filename)
        return super().resume(filename, **kwargs)
