"""Workarounds for incompatibilities between our pinned third-party packages.

Every fix is one function, idempotent, and covered by a test in ``tests/test_compat.py`` that
fails if the fix is removed. Each says why it exists so it can be dropped when upstream catches
up. Nothing is applied by ``import hpff_dist``; the entry points apply the fixes explicitly:

* :func:`apply_all` (the cheap fixes): ``build_runner`` and the tools that build models or
  runners without it (``tools/benchmark_dist.py``, the benchmark's ``measure_step``);
* :func:`register_deepspeed_optimizers_once`: the DeepSpeed strategy module, on import;
* :func:`defer_deepspeed_import_in_mmengine`: ``hpff_dist.engine.mmengine_runner``, which
  every module of ours imports mmengine's runner classes from (it must run before
  ``mmengine.runner`` is first imported, so it cannot wait for an entry point).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path

import torch

_applied: set[str] = set()


def _once(name: str) -> bool:
    if name in _applied:
        return False
    _applied.add(name)
    return True


def allow_mmengine_checkpoints_under_weights_only() -> None:
    """torch >= 2.6 loads with ``weights_only=True``; mmengine 0.10.7 calls ``torch.load``
    without the flag, and its checkpoints hold a pickled ``MessageHub`` state (``HistoryBuffer``,
    numpy scalars/arrays, ``ConfigDict``). Rather than disabling the safe loader we allow-list
    exactly those types, so resuming works and arbitrary pickles are still refused."""
    if not _once("weights_only"):
        return
    from mmengine.logging.history_buffer import HistoryBuffer

    # HistoryBuffer pickles its statistics methods as ``getattr(HistoryBuffer, 'mean')``;
    # allowing ``getattr`` would reopen arbitrary code execution. The four built-in methods
    # are re-created by ``__setstate__`` anyway, so we leave them out of the pickle.
    builtin_stats = {"min", "max", "current", "mean"}

    def getstate(self) -> dict:
        state = dict(self.__dict__)
        custom = {k: v for k, v in self._statistics_methods.items() if k not in builtin_stats}
        state.pop("statistics_methods", None)
        if custom:
            state["statistics_methods"] = custom
        return state

    HistoryBuffer.__getstate__ = getstate
    torch.serialization.add_safe_globals(mmengine_checkpoint_globals())


def mmengine_checkpoint_globals() -> list:
    """The non-tensor types an mmengine checkpoint's pickled state holds (message hub history,
    numpy scalars/arrays, ``ConfigDict``): allowed globally by
    :func:`allow_mmengine_checkpoints_under_weights_only`, and for one load by the DeepSpeed
    checkpoint check (``hpff_dist.engine.checkpoint``)."""
    import codecs

    import numpy as np
    from mmengine.config.config import ConfigDict
    from mmengine.logging.history_buffer import HistoryBuffer

    multiarray = np._core.multiarray
    safe = [HistoryBuffer, ConfigDict, np.dtype, np.ndarray, multiarray._reconstruct]
    safe += [multiarray.scalar, codecs.encode]
    safe += [type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool")]
    return safe


def skip_cuda_set_device_without_gpu() -> None:
    """mmengine's pytorch/slurm launchers call ``torch.cuda.set_device(local_rank)``
    unconditionally, which raises on a CPU-only host (our CI, gloo runs). On a machine with
    GPUs nothing changes; without one the call is skipped and the process group is created
    with the configured backend (gloo)."""
    if not _once("set_device"):
        return
    import mmengine.dist.utils as dist_utils

    for name in ("_init_dist_pytorch", "_init_dist_slurm"):
        original = getattr(dist_utils, name)

        def launcher(*args, __original=original, **kwargs):
            if torch.cuda.is_available():
                return __original(*args, **kwargs)
            real_set_device = torch.cuda.set_device
            torch.cuda.set_device = lambda *_a, **_k: None
            try:
                return __original(*args, **kwargs)
            finally:
                torch.cuda.set_device = real_set_device

        launcher.__wrapped__ = original
        setattr(dist_utils, name, launcher)


def provide_deepspeed_onebit_module() -> None:
    """mmengine's DeepSpeed strategy registers DeepSpeed's optimizers and imports
    ``deepspeed.runtime.fp16.onebit`` (OnebitAdam, OnebitLamb, ZeroOneAdam), which DeepSpeed
    0.19 removed. We register a module whose names raise a clear error if a config asks for
    those optimizers; every other DeepSpeed optimizer keeps working."""
    if not _once("onebit"):
        return
    # Look on disk instead of importing: importing DeepSpeed costs seconds at every start.
    spec = importlib.util.find_spec("deepspeed")
    if spec is None or not spec.submodule_search_locations:
        return
    fp16_dir = Path(spec.submodule_search_locations[0]) / "runtime" / "fp16"
    if (fp16_dir / "onebit").exists() or (fp16_dir / "onebit.py").exists():
        return

    module = types.ModuleType("deepspeed.runtime.fp16.onebit")
    module.__doc__ = "Placeholder: 1-bit optimizers were removed from DeepSpeed 0.19."

    def removed(name: str) -> type:
        def __init__(self, *args, **kwargs):
            raise RuntimeError(
                f"{name} was removed from DeepSpeed 0.19; use SGD, AdamW or FusedAdam in "
                "optim_wrapper.optimizer instead"
            )

        return type(name, (), {"__init__": __init__})

    for name in ("OnebitAdam", "OnebitLamb", "ZeroOneAdam"):
        setattr(module, name, removed(name))
    sys.modules["deepspeed.runtime.fp16.onebit"] = module


def point_sample(
    input: torch.Tensor, points: torch.Tensor, align_corners: bool = False, **kwargs
) -> torch.Tensor:
    """Pure-torch ``mmcv.ops.point_sample``: bilinear samples at [0, 1] point coordinates.

    ``points`` is (N, P, 2) or (N, Hp, Wp, 2) in [0, 1] (x, y); returns (N, C, P) or
    (N, C, Hp, Wp), like mmcv's op (which is itself ``grid_sample`` on 2x-1 coordinates)."""
    add_dim = points.dim() == 3
    if add_dim:
        points = points.unsqueeze(2)
    out = torch.nn.functional.grid_sample(
        input, 2.0 * points - 1.0, align_corners=align_corners, **kwargs
    )
    return out.squeeze(3) if add_dim else out


def provide_mmcv_ops_without_compiled_extension() -> None:
    """mmsegmentation 1.2.2 imports ``mmcv.ops`` at module level (``point_sample``,
    ``sigmoid_focal_loss``); mmcv-lite ships ``mmcv.ops`` without its compiled ``_ext``, so
    ``import mmseg.models`` fails. The DeepLab path needs only ``point_sample``: we provide it in
    pure torch, and any other op raises a clear error when called. When a real mmcv with
    compiled ops is installed, this steps aside."""
    if not _once("mmcv_ops"):
        return
    try:
        importlib.import_module("mmcv.ops")
        return
    except (ImportError, ModuleNotFoundError) as err:
        if "_ext" not in str(err) and "mmcv.ops" not in str(err):
            raise
    sys.modules.pop("mmcv.ops", None)
    module = types.ModuleType("mmcv.ops")
    module.__doc__ = "hpff_dist stand-in for mmcv.ops (mmcv-lite has no compiled ops)."
    module.point_sample = point_sample

    def missing(name: str):
        if name.startswith("__"):
            raise AttributeError(name)

        def op(*args, **kwargs):
            raise RuntimeError(
                f"mmcv.ops.{name} needs mmcv's compiled ops; install full mmcv (not mmcv-lite) "
                "to use it. hpff_dist only provides point_sample."
            )

        op.__name__ = name
        return op

    module.__getattr__ = missing
    sys.modules["mmcv.ops"] = module
    import mmcv

    mmcv.ops = module


class _DeferredDeepSpeed(types.ModuleType):
    """Stands for ``deepspeed`` in mmengine's strategy module until one of its attributes is
    read; then imports the real package and puts it in the stand-in's place."""

    def __init__(self, owner: types.ModuleType) -> None:
        super().__init__("deepspeed", "hpff_dist stand-in: DeepSpeed, imported on first use")
        self._owner = owner

    def __getattr__(self, name: str):
        if name.startswith("__") and name.endswith("__") and name != "__version__":
            raise AttributeError(name)  # copy/pickle/inspect probes must not import DeepSpeed
        real = importlib.import_module("deepspeed")
        if getattr(self._owner, "deepspeed", None) is self:
            self._owner.deepspeed = real
        return getattr(real, name)


def defer_deepspeed_import_in_mmengine() -> None:
    """``mmengine.runner`` imports ``mmengine._strategy.deepspeed``, whose first line is
    ``import deepspeed``: seconds, an accelerator probe and its warnings at every start, also
    for single-process runs that never use DeepSpeed. We import mmengine's runner package while
    ``import deepspeed`` fails (mmengine then keeps ``deepspeed = None``), and replace that
    ``None`` by a stand-in that imports DeepSpeed the first time mmengine's DeepSpeed strategy
    reads an attribute of it (``deepspeed.initialize``, ``deepspeed.__version__``). mmengine's
    and our DeepSpeed strategies work unchanged. Does nothing when DeepSpeed is not installed or
    ``mmengine.runner`` was imported already (DeepSpeed is then loaded anyway)."""
    if not _once("defer_deepspeed"):
        return
    if "mmengine._strategy.deepspeed" in sys.modules or "deepspeed" in sys.modules:
        return
    if importlib.util.find_spec("deepspeed") is None:
        return
    sys.modules["deepspeed"] = None  # type: ignore[assignment]  # makes `import deepspeed` fail
    try:
        importlib.import_module("mmengine.runner")
        ms_deepspeed = importlib.import_module("mmengine._strategy.deepspeed")
    finally:
        if "deepspeed" in sys.modules and sys.modules["deepspeed"] is None:
            del sys.modules["deepspeed"]
    if ms_deepspeed.deepspeed is None:
        ms_deepspeed.deepspeed = _DeferredDeepSpeed(ms_deepspeed)


def register_deepspeed_optimizers_once() -> None:
    """mmengine's ``DeepSpeedStrategy.__init__`` registers DeepSpeed's optimizers without
    ``force``, so a second strategy in one process (a resumed run, a test sweeping ZeRO stages,
    a benchmark) dies with ``KeyError: DeepSpeedCPUAdam is already registered``. Registration
    now happens once and later calls return the same names. Applied by
    ``hpff_dist.engine.deepspeed.strategy`` on import, not by :func:`apply_all`: only DeepSpeed
    runs need it (registering imports DeepSpeed; the patch itself does not)."""
    if not _once("deepspeed_register_once"):
        return
    provide_deepspeed_onebit_module()
    import mmengine._strategy.deepspeed as ms_deepspeed

    original = ms_deepspeed.register_deepspeed_optimizers
    names: list[str] = []

    def register_once() -> list[str]:
        if not names:
            try:
                names.extend(original())
            except KeyError:  # registered before this fix was applied: report what is there
                from mmengine.registry import OPTIMIZERS

                known = ("DeepSpeedCPUAdam", "FusedAdam", "FusedLamb", "OnebitAdam", "OnebitLamb",
                         "ZeroOneAdam")  # fmt: skip
                names.extend(n for n in known if n in OPTIMIZERS.module_dict)
        return list(names)

    register_once.__wrapped__ = original
    ms_deepspeed.register_deepspeed_optimizers = register_once


def apply_all() -> None:
    """Apply every cheap workaround (not the DeepSpeed-only ones); idempotent. Called by the
    entry points that build runners or models (``build_runner``, tools), never on import."""
    allow_mmengine_checkpoints_under_weights_only()
    skip_cuda_set_device_without_gpu()
    provide_mmcv_ops_without_compiled_extension()
