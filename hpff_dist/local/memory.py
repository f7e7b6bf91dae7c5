"""Activation memory without a GPU: live bytes of tensors saved for backward, and their peak.

``SavedTensorMeter`` installs ``torch.autograd.graph.saved_tensors_hooks``. Every tensor autograd
saves is wrapped in a small holder; the bytes of its storage are added when the first holder of
that storage is created and subtracted when the last one is released (autograd frees saved
tensors after backward, or when the graph is dropped). Storages are counted once however many
ops save them, and parameters can be excluded since they are alive anyway. The peak of the
live total is what activation memory costs; it is exact and repeatable, unlike allocator stats.

Code may label what it runs with ``memory_region('aux')``; the meter also keeps the peak of the
bytes first saved inside each region (the schedules label the aux heads that way).
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

_REGION: contextvars.ContextVar[str] = contextvars.ContextVar("hpff_memory_region", default="other")


@contextmanager
def memory_region(name: str) -> Iterator[None]:
    """Label tensors saved for backward inside this block as belonging to region ``name``."""
    token = _REGION.set(name)
    try:
        yield
    finally:
        _REGION.reset(token)


class _Saved:
    """Holds one saved tensor; tells the meter when autograd lets go of it."""

    __slots__ = ("tensor", "key", "meter")

    def __init__(self, tensor: Tensor, key: Any, meter: SavedTensorMeter) -> None:
        # Detached alias: holding a saved *output* itself would form a cycle (node -> holder ->
        # tensor -> grad_fn node) that keeps a dropped graph alive. Autograd re-attaches the
        # metadata on unpack.
        self.tensor = tensor.detach()
        self.key = key
        self.meter = meter

    def __del__(self) -> None:
        if self.key is not None:
            self.meter._release(self.key)


def _storage_key(t: Tensor) -> tuple[Any, int, int] | None:
    try:
        storage = t.untyped_storage()
    except (RuntimeError, NotImplementedError):
        return None
    return (t.device, storage.data_ptr(), storage.nbytes())


class SavedTensorMeter:
    """Context manager measuring live and peak bytes of tensors saved for backward.

    ``ignore``: tensors (typically ``model.parameters()``) whose storages are not counted.
    After the block: ``peak_bytes`` (all regions), ``region_peak_bytes[name]``, ``live_bytes``.
    """

    def __init__(self, ignore: Iterable[Tensor] | nn.Module | None = None) -> None:
        if isinstance(ignore, nn.Module):
            ignore = list(ignore.parameters()) + list(ignore.buffers())
        self._ignored = {k for t in (ignore or ()) if (k := _storage_key(t)) is not None}
        self._entries: dict[Any, list[Any]] = {}  # key -> [holders, nbytes, region]
        self.live_bytes = 0
        self.peak_bytes = 0
        self.region_live_bytes: dict[str, int] = {}
        self.region_peak_bytes: dict[str, int] = {}
        self._hooks: torch.autograd.graph.saved_tensors_hooks | None = None

    def _pack(self, t: Tensor) -> _Saved:
        key = _storage_key(t)
        if key is None or key in self._ignored:
            return _Saved(t, None, self)
        entry = self._entries.get(key)
        if entry is not None:
            entry[0] += 1
        else:
            region, nbytes = _REGION.get(), key[2]
            self._entries[key] = [1, nbytes, region]
            self.live_bytes += nbytes
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)
            live = self.region_live_bytes.get(region, 0) + nbytes
            self.region_live_bytes[region] = live
            self.region_peak_bytes[region] = max(self.region_peak_bytes.get(region, 0), live)
        return _Saved(t, key, self)

    @staticmethod
    def _unpack(holder: _Saved) -> Tensor:
        return holder.tensor

    def _release(self, key: Any) -> None:
        entry = self._entries.get(key)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            del self._entries[key]
            self.live_bytes -= entry[1]
            self.region_live_bytes[entry[2]] -= entry[1]

    def reset_peak(self) -> None:
        self.peak_bytes = self.live_bytes
        self.region_peak_bytes = dict(self.region_live_bytes)

    def __enter__(self) -> SavedTensorMeter:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._hooks is not None
        self._hooks.__exit__(*exc)
        self._hooks = None


def aux_peak_saved_bytes(
    learner: nn.Module,
    images: Tensor,
    targets: Tensor,
    image_restored: Tensor | None = None,
) -> int:
    """Peak bytes the aux heads save for backward during one training step of ``learner``.

    Runs ``learner.train_step_losses`` (a ``LocalLearner``) once with the plain backward, so it
    leaves gradients in ``.grad`` and updates BatchNorm statistics like a real step.
    """
    with SavedTensorMeter(ignore=learner) as meter:
        learner.train_step_losses(images, targets, image_restored)
    return meter.region_peak_bytes.get("aux", 0)
