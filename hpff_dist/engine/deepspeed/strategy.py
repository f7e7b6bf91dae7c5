"""``LocalDeepSpeedStrategy``: mmengine's DeepSpeed strategy made exact for local learning.

It owns what needs the process group or the built model: the launcher, the batch keys checked
against the world size (``hpff_dist.engine.batch``), the DeepSpeed config policy
(``policy``), the optim and engine wrappers (``wrappers``), and the checkpoint checks
(``hpff_dist.engine.checkpoint``). What it changes in the config is reported like the config
resolution's changes (``hpff_dist.engine.changes``): logged, and appended to
``config_changes.json`` in the work dir.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import torch
import torch.distributed as torch_dist
from mmengine.logging import print_log
from mmengine.optim import BaseOptimWrapper
from torch import nn

from hpff_dist import compat
from hpff_dist.engine.batch import resolve_batch_config
from hpff_dist.engine.changes import ChangeRecorder, report_changes
from hpff_dist.engine.checkpoint import (
    MODEL_STATES_FILE,
    average_bn_buffers,
    check_deepspeed_checkpoint,
)
from hpff_dist.engine.deepspeed.policy import (
    DEEPSPEED_CONFIG,
    DeepSpeedConfigError,
    translate_optim_wrapper,
    validate_deepspeed_config,
)
from hpff_dist.engine.deepspeed.wrappers import (
    LocalDeepSpeedEngineWrapper,
    LocalDeepSpeedOptimWrapper,
)
from hpff_dist.engine.launchers import check_launcher, enable, resolve_backend
from hpff_dist.engine.mmengine_runner import DeepSpeedStrategy
from hpff_dist.registry import STRATEGIES

__all__ = ["LocalDeepSpeedStrategy"]

compat.register_deepspeed_optimizers_once()

_BY = "LocalDeepSpeedStrategy"


@STRATEGIES.register_module()
class LocalDeepSpeedStrategy(DeepSpeedStrategy):
    """mmengine's DeepSpeed strategy made exact for local learning (see
    :mod:`hpff_dist.engine.deepspeed`).

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
        self._report(lambda recorder: validate_deepspeed_config(self.config, recorder))
        self.global_batch_size = global_batch_size
        self.sync_bn = sync_bn

    def _report(self, change: Any) -> Any:
        """Run ``change(recorder)`` and report what it changed (logged; rank 0 appends it to
        the work dir's ``config_changes.json``)."""
        recorder = ChangeRecorder(by=_BY)
        result = change(recorder)
        report_changes(recorder.changes, self.work_dir, self.rank)
        return result

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
        cfg = self._report(
            lambda recorder: translate_optim_wrapper(
                optim_wrapper, self.config, self._explicit_clip, recorder
            )
        )
        cfg["type"] = LocalDeepSpeedOptimWrapper
        return super().build_optim_wrapper(cfg, model)

    def _dist_world_size(self) -> int:
        if torch_dist.is_available() and torch_dist.is_initialized():
            return torch_dist.get_world_size()
        return 1

    def _fill_batch_and_dtypes(self, recorder: ChangeRecorder) -> None:
        """DeepSpeed's batch keys from the per-device batch and the world size, and the buffer
        dtype CPU bf16 needs."""
        per_device = (self.dispatch_kwargs or {}).get("train_micro_batch_size_per_gpu")
        if per_device is None:
            per_device = self.config.get("train_micro_batch_size_per_gpu", 1)
        batch = resolve_batch_config(
            int(per_device),
            self._dist_world_size(),
            int(self.config.get("gradient_accumulation_steps", 1)),
            self.global_batch_size,
            self.config,
        )
        why = "global batch = per-device batch x world size x accumulation steps"
        for key, value in batch.items():
            recorder.set(self.config, key, value, why, f"{DEEPSPEED_CONFIG}.{key}")
        if (self.config.get("bf16") or {}).get("enabled", False) and not torch.cuda.is_available():
            data_types = self.config.setdefault("data_types", {})
            if "buffer_dtype" not in data_types:
                recorder.set(
                    data_types,
                    "buffer_dtype",
                    "bf16",
                    "DeepSpeed 0.19 casts parameters to bf16 but keeps buffers fp32; CUDA "
                    "BatchNorm accepts that mix, CPU BatchNorm does not",
                    f"{DEEPSPEED_CONFIG}.data_types.buffer_dtype",
                )

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
        self._report(self._fill_batch_and_dtypes)
        if self.sync_bn:
            if not torch.cuda.is_available():
                raise DeepSpeedConfigError("sync_bn needs GPUs: torch has no CPU SyncBatchNorm")
            # over the ranks that hold the same layers (a pipeline stage's replicas)
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model, process_group=self._bn_group())
        mpu = self._deepspeed_mpu()
        if not hasattr(self, "optim_wrapper"):
            engine, *_ = deepspeed.initialize(model=model, config=self.config, mpu=mpu)
        else:
            engine, optimizer, *_ = deepspeed.initialize(
                model=model, optimizer=self.optim_wrapper.optimizer, config=self.config, mpu=mpu
            )
            self.optim_wrapper.optimizer = optimizer
        if torch_dist.get_rank() == 0:
            zero = self.config.get("zero_optimization") or {}
            print_log(
                f"DeepSpeed: ZeRO stage {int(zero.get('stage', 0))}, "
                f"bf16={bool((self.config.get('bf16') or {}).get('enabled', False))}, "
                f"global batch {self.config['train_batch_size']} = per-device "
                f"{self.config['train_micro_batch_size_per_gpu']} x world "
                f"{self._dist_world_size()} x accumulation "
                f"{self.config['gradient_accumulation_steps']}, "
                f"gradient_clipping={self.config['gradient_clipping']}",
                logger="current",
            )
        return self.engine_wrapper_type(model=engine, inputs_to_half=self._inputs_to_half)

    #: the model wrapper around DeepSpeed's engine (a pipelined run has its own)
    engine_wrapper_type: type = LocalDeepSpeedEngineWrapper

    def _deepspeed_mpu(self) -> Any:
        """DeepSpeed's ``mpu`` (its data- and model-parallel groups); None: data parallel over
        the whole world."""
        return None

    def _bn_group(self) -> Any:
        """The ranks whose BatchNorm buffers are averaged before a save (None: all)."""
        return None

    def _states_file(self) -> str:
        """The module-state file of the checkpoint directory this process loads."""
        return MODEL_STATES_FILE

    def save_checkpoint(self, filename: str, **kwargs: Any) -> None:
        """Average BatchNorm buffers over ranks (see :func:`average_bn_buffers`), then
        mmengine's DeepSpeed save: a directory ``filename`` with the module (from rank 0), each
        rank's optimizer partition, and mmengine's meta/message hub/scheduler state, written
        under a hidden partial name and renamed when every rank has finished."""
        average_bn_buffers(self.model.module, self._bn_group())
        folder, name = os.path.split(filename)
        partial = os.path.join(folder, f".{name}.partial")
        rank = torch_dist.get_rank() if torch_dist.is_initialized() else 0
        node_leader = int(os.environ.get("LOCAL_RANK", rank)) == 0
        if node_leader and os.path.isdir(partial):
            shutil.rmtree(partial, ignore_errors=True)
        self._barrier()
        # every rank writes its optimizer partition into the partial directory; once all are
        # done it is renamed, so the checkpoint's name never holds a half-written one. Rank 0
        # first (a shared filesystem: done for every node), then the first process of each
        # node whose partial directory is still there (node-local checkpoint storage).
        super().save_checkpoint(partial, **kwargs)
        self._barrier()
        if rank == 0:
            _replace_directory(partial, filename)
        self._barrier()
        if rank != 0 and node_leader and os.path.isdir(partial):
            _replace_directory(partial, filename)
        self._barrier()

    @staticmethod
    def _barrier() -> None:
        if torch_dist.is_available() and torch_dist.is_initialized():
            torch_dist.barrier()

    def load_checkpoint(self, filename: str, **kwargs: Any) -> dict:
        check_deepspeed_checkpoint(filename, self.model.module, self._states_file())
        return super().load_checkpoint(filename, **kwargs)

    def resume(self, filename: str, **kwargs: Any) -> dict:
        check_deepspeed_checkpoint(filename, self.model.module, self._states_file())
        return super().resume(filename, **kwargs)


def _replace_directory(source: str, target: str) -> None:
    """``source`` renamed to ``target``; an existing ``target`` is moved aside first and
    removed after, so ``target`` never names a mix of two saves."""
    old = None
    if os.path.isdir(target):
        folder, name = os.path.split(target)
        old = os.path.join(folder, f".{name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(source, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
