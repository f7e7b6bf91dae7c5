"""Dataloaders that are not ``torch.utils.data`` pipelines (DALI), made acceptable to mmengine.

mmengine builds a dataloader from a dict of ``dataset``/``sampler``/``collate_fn``, or takes a
ready ``torch.utils.data.DataLoader`` instance (an ``isinstance`` check in
``Runner.build_dataloader``). A DALI pipeline has no torch ``Dataset``, so a config names it by
``type`` and :func:`materialize_dataloaders` swaps that dict for a :class:`LazyDaliDataLoader`.

Why lazy: ``materialize_dataloaders`` runs before the Runner sets up the process group and the
CUDA device, and DALI needs both (its shard is the global rank, its decoder the local GPU). The
object only stores its arguments; the pipeline is built on first ``len()`` or iteration, which
mmengine does after ``init_dist``. Until then the object is a plain record that survives the
Runner's ``deepcopy(cfg)`` and prints as the ``dict(...)`` it came from, so the config the Runner
dumps to the work dir stays valid Python.

What mmengine reads from a train/val loader, and where this object provides it: ``len()`` (loop
length), iteration (``(images, labels)`` batches), ``batch_size`` (``auto_scale_lr``),
``batch_sampler.batch_size`` (FlexibleRunner), ``sampler.set_epoch`` (``DistSamplerSeedHook`` and
the epoch loops; DALI reshuffles by itself, so it is a no-op) and ``dataset`` with ``len()``
(evaluators size their results by it).
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Any

import torch
from mmengine.registry import Registry
from torch.utils.data import DataLoader

from hpff_dist.registry import SCOPE

#: Loader *objects* built from a config dict by :func:`materialize_dataloaders`.
DATA_LOADERS = Registry("data loader", scope=SCOPE)

LOADER_KEYS = ("train_dataloader", "val_dataloader", "test_dataloader")


class _DatasetInfo:
    """What evaluators ask of ``loader.dataset``: its size (samples, before rank padding)."""

    def __init__(self, loader: LazyDaliDataLoader) -> None:
        self._loader = loader

    def __len__(self) -> int:
        return self._loader.built.num_samples


class _EpochSampler:
    """``sampler.set_epoch`` for mmengine's hooks; forwards to the DALI loader (a no-op)."""

    def __init__(self, loader: LazyDaliDataLoader) -> None:
        self._loader = loader

    def set_epoch(self, epoch: int) -> None:
        self._loader.set_epoch(epoch)


class _BatchSamplerInfo:
    """``batch_sampler.batch_size`` / ``.sampler``: what FlexibleRunner reads of a DataLoader."""

    def __init__(self, loader: LazyDaliDataLoader) -> None:
        self._loader = loader
        self.sampler = loader.sampler

    @property
    def batch_size(self) -> int:
        return self._loader.batch_size


@DATA_LOADERS.register_module(name="DaliImageNetLoader")
class LazyDaliDataLoader(DataLoader):
    """A ``DaliImageNetLoader`` that mmengine accepts as a DataLoader, built on first use.

    Takes the arguments of :class:`hpff_dist.data.imagenet.dali_loader.DaliImageNetLoader`
    (``root, split, batch_size, train, image_size, resize_size, num_threads, device, seed,
    drop_last, max_bad_samples, prefetch, normalize``). ``rank``/``world_size`` default to the
    process group existing at build time. It subclasses ``DataLoader`` only to pass mmengine's
    ``isinstance`` check; ``DataLoader.__init__`` is deliberately not called.
    """

    def __init__(self, batch_size: int = 32, **kwargs: Any) -> None:
        # no super().__init__(): there is no torch Dataset; DataLoader's attribute guard is off
        # until its __init__ has run, so plain attributes can be set.
        self.batch_size = batch_size
        self.kwargs = kwargs
        self._built: Any = None
        self.dataset = _DatasetInfo(self)
        self.sampler = _EpochSampler(self)
        self.batch_sampler = _BatchSamplerInfo(self)

    @property
    def built(self) -> Any:
        """The ``DaliImageNetLoader`` (built now if it was not yet)."""
        if self._built is None:
            from hpff_dist.data.imagenet.dali_loader import DaliImageNetLoader

            self._built = DaliImageNetLoader(batch_size=self.batch_size, **self.kwargs)
        return self._built

    def __len__(self) -> int:
        return len(self.built)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return iter(self.built)

    def set_epoch(self, epoch: int) -> None:
        if self._built is not None:
            self._built.set_epoch(epoch)

    def __deepcopy__(self, memo: dict) -> LazyDaliDataLoader:
        # A loader is a resource, not configuration: copies of the config share it.
        return self

    def __repr__(self) -> str:
        args = ", ".join(
            f"{k}={v!r}" for k, v in {"batch_size": self.batch_size, **self.kwargs}.items()
        )
        return f"dict(type='DaliImageNetLoader', {args})"

    __str__ = __repr__


def build_loader(config: MutableMapping[str, Any]) -> Any:
    """A loader object from ``dict(type=<DATA_LOADERS name>, ...)``."""
    config = dict(config)
    name = config.pop("type")
    cls = DATA_LOADERS.get(name)
    if cls is None:
        raise KeyError(
            f"{name!r} is not a registered data loader ({sorted(DATA_LOADERS.module_dict)})"
        )
    return cls(**config)


def materialize_dataloaders(cfg: MutableMapping[str, Any]) -> None:
    """Replace, in place, every ``{train,val,test}_dataloader`` dict whose ``type`` names one of
    our loader objects (``DATA_LOADERS``) by that object. Plain mmengine dataloader dicts
    (``dataset``/``sampler``/``collate_fn``, no ``type``) and ``None`` are left alone.

    A ``test_dataloader`` equal to ``val_dataloader`` (``test_dataloader = val_dataloader`` in
    a config; loading copies it) gets the same object, so one DALI pipeline serves both.
    """
    built: list[tuple[MutableMapping, Any]] = []
    for key in LOADER_KEYS:
        value = cfg.get(key)
        if not isinstance(value, MutableMapping):
            continue
        name = value.get("type")
        if not isinstance(name, str) or DATA_LOADERS.get(name) is None:
            continue
        same = [obj for spec, obj in built if spec == value]
        if not same:
            built.append((dict(value), build_loader(value)))
        cfg[key] = same[0] if same else built[-1][1]


__all__ = ["DATA_LOADERS", "LazyDaliDataLoader", "build_loader", "materialize_dataloaders"]
