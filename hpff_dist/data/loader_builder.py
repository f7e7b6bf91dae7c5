"""The one way loaders are built from config: training (through mmengine), tools and tests.

:func:`build_dataloader` turns one ``{train,val,test}_dataloader`` config entry into its loader
the way a training run does, so a benchmark or a test measures the loader a run trains with,
sampler and collate function included. The rest of this module makes loaders that are not
``torch.utils.data`` pipelines (DALI) acceptable to mmengine.

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
(evaluators size their results by it) and, for segmentation, ``metainfo`` (the evaluator's and
visualiser's ``dataset_meta``: classes, palette).
"""

from __future__ import annotations

import copy
import importlib
import inspect
import weakref
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

from mmengine.registry import DefaultScope, Registry
from torch.utils.data import DataLoader

from hpff_dist.registry import SCOPE

#: Loader *objects* built from a config dict by :func:`materialize_dataloaders`.
DATA_LOADERS = Registry("data loader", scope=SCOPE)

LOADER_KEYS = ("train_dataloader", "val_dataloader", "test_dataloader")

#: Keys a torch DataLoader config entry keeps for the DataLoader itself (next to ``dataset``).
DATALOADER_ARGS = frozenset(
    {
        "batch_size",
        "num_workers",
        "drop_last",
        "pin_memory",
        "persistent_workers",
        "prefetch_factor",
    }
)


class _DatasetInfo:
    """What evaluators ask of ``loader.dataset``: its size (samples, before rank padding)."""

    def __init__(self, loader: LazyDaliDataLoader) -> None:
        self._loader = weakref.proxy(loader)

    def __len__(self) -> int:
        return self._loader.built.num_samples


class _SegDatasetInfo(_DatasetInfo):
    """Also ``metainfo`` (classes, palette): mmengine's loops give it to the evaluator
    (``IoUMetric`` reads ``dataset_meta['classes']``) and the visualiser, and
    ``data_prefix`` (where prediction pictures take relative names from)."""

    @property
    def metainfo(self) -> dict[str, Any]:
        return self._loader.built.metainfo

    @property
    def data_prefix(self) -> dict[str, str]:
        return self._loader.built.data_prefix


class _EpochSampler:
    """``sampler.set_epoch`` for mmengine's hooks; forwards to the DALI loader (a no-op)."""

    def __init__(self, loader: LazyDaliDataLoader) -> None:
        self._loader = weakref.proxy(loader)

    def set_epoch(self, epoch: int) -> None:
        self._loader.set_epoch(epoch)


class _BatchSamplerInfo:
    """``batch_sampler.batch_size`` / ``.sampler``: what FlexibleRunner reads of a DataLoader."""

    def __init__(self, loader: LazyDaliDataLoader) -> None:
        self._loader = weakref.proxy(loader)
        self.sampler = loader.sampler

    @property
    def batch_size(self) -> int:
        return self._loader.batch_size


@DATA_LOADERS.register_module(name="DaliImageNetLoader")
class LazyDaliDataLoader(DataLoader):
    """A DALI loader that mmengine accepts as a DataLoader, built on first use; this class is
    the ``DaliImageNetLoader`` entry, :class:`LazyDaliSegLoader` the ``DaliSegLoader`` one (a
    subclass names its loader class and what its ``dataset`` view offers).

    Takes the arguments of the loader class (ImageNet:
    :class:`hpff_dist.data.imagenet.dali_loader.DaliImageNetLoader`, ``root, split,
    batch_size, train, image_size, resize_size, num_threads, device, seed, drop_last,
    max_bad_samples, prefetch``), checked here so that a misspelt or refused key
    (``normalize``: only the model's data preprocessor normalises) fails when the config is
    read, not when the pipeline is built. ``rank``/``world_size`` default to the process group
    existing at build time. It subclasses ``DataLoader`` only to pass mmengine's ``isinstance``
    check; ``DataLoader.__init__`` is deliberately not called.
    """

    #: The ``DATA_LOADERS`` name, and ``module:class`` of the loader built (imported on use:
    #: the engine imports this module without needing the backends).
    loader_name = "DaliImageNetLoader"
    loader_path = "hpff_dist.data.imagenet.dali_loader:DaliImageNetLoader"
    _dataset_view: type[_DatasetInfo] = _DatasetInfo

    def __init__(self, batch_size: int | None = None, **kwargs: Any) -> None:
        loader_class = self.loader_class()
        self.check_args(kwargs)
        if batch_size is None:
            batch_size = inspect.signature(loader_class).parameters["batch_size"].default
        inspect.signature(loader_class).bind(batch_size=batch_size, **kwargs)
        # no super().__init__(): there is no torch Dataset; DataLoader's attribute guard is off
        # until its __init__ has run, so plain attributes can be set.
        self.batch_size = batch_size
        self.kwargs = kwargs
        self._built: Any = None
        # The views hold weak references: no cycle, so a dropped loader frees its DALI pipeline
        # at once in this process. Left to the garbage collector, the pipeline could be
        # finalised in a forked DataLoader worker, where DALI's executor destructor waits
        # forever for threads that were not forked.
        self.dataset = self._dataset_view(self)
        self.sampler = _EpochSampler(self)
        self.batch_sampler = _BatchSamplerInfo(self)

    @classmethod
    def loader_class(cls) -> type:
        """The DALI loader class this entry builds."""
        module, name = cls.loader_path.split(":")
        return getattr(importlib.import_module(module), name)

    def check_args(self, kwargs: dict[str, Any]) -> None:
        """Refuse normalisation arguments (ImageNet: the loader has none on purpose)."""
        from hpff_dist.data.imagenet.transforms import reject_normalisation

        reject_normalisation(self.loader_name, kwargs)

    @property
    def built(self) -> Any:
        """The DALI loader (built now if it was not yet)."""
        if self._built is None:
            self._built = self.loader_class()(batch_size=self.batch_size, **self.kwargs)
        return self._built

    def __len__(self) -> int:
        return len(self.built)

    def __iter__(self) -> Iterator[Any]:
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
        return f"dict(type={self.loader_name!r}, {args})"

    __str__ = __repr__


@DATA_LOADERS.register_module(name="DaliSegLoader")
class LazyDaliSegLoader(LazyDaliDataLoader):
    """The ``DaliSegLoader`` entry: :class:`hpff_dist.data.cityscapes.dali_loader.DaliSegLoader`
    (mmseg batches of Cityscapes shards), whose ``dataset`` also has ``metainfo`` and
    ``data_prefix`` for the evaluator and the prediction pictures."""

    loader_name = "DaliSegLoader"
    loader_path = "hpff_dist.data.cityscapes.dali_loader:DaliSegLoader"
    _dataset_view = _SegDatasetInfo

    def check_args(self, kwargs: dict[str, Any]) -> None:
        """Nothing beyond the signature: the loader takes no normalisation arguments."""


def _is_loader_object(config: Any) -> bool:
    """Whether a loader config entry names one of our loader objects (``DATA_LOADERS``)."""
    if not isinstance(config, Mapping):
        return False
    name = config.get("type")
    return isinstance(name, str) and DATA_LOADERS.get(name) is not None


def build_loader(config: Mapping[str, Any]) -> Any:
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
        if not _is_loader_object(value):
            continue
        same = [obj for spec, obj in built if spec == value]
        if not same:
            built.append((dict(value), build_loader(value)))
        cfg[key] = same[0] if same else built[-1][1]


def build_dataloader(config: Mapping[str, Any] | DataLoader, seed: int | None = None) -> DataLoader:
    """The loader one ``{train,val,test}_dataloader`` config entry describes, built as a training
    run builds it: a ``DATA_LOADERS`` entry (``type='DaliImageNetLoader'``) becomes the object
    :func:`materialize_dataloaders` makes, any other entry goes through mmengine's
    ``Runner.build_dataloader`` (dataset, sampler, collate function from the registries, in the
    ``hpff_dist`` scope), which the Runner calls on the same entry (``FlexibleRunner``'s copy does
    the same for our configs). Tools and tests use this, so they see the sampler, collate
    function and transforms a run trains with.

    ``seed`` plays the Runner's ``randomness.seed``: it seeds mmengine's ``DefaultSampler`` and
    the workers; with ``None`` each call draws its own sampler seed. DALI entries carry their own
    ``seed``. Ranks come from the process group (mmengine's ``get_dist_info``; ours also read
    ``RANK``/``WORLD_SIZE`` without one).
    """
    if _is_loader_object(config):
        config = build_loader(config)
    # The Runner's own builder, imported only when used and without importing DeepSpeed.
    from hpff_dist.engine.mmengine_runner import Runner

    with DefaultScope.overwrite_default_scope(SCOPE):
        return Runner.build_dataloader(config, seed=seed)


def with_loader_args(config: Mapping[str, Any], **args: Any) -> dict[str, Any]:
    """A deep copy of one loader config entry with ``args`` set where that kind of loader reads
    them, so a tool or a test can point a config's loader at other data or sizes without knowing
    its shape: a ``DATA_LOADERS`` entry (DALI) takes every argument itself; a torch DataLoader
    entry keeps :data:`DATALOADER_ARGS` and hands the rest to its ``dataset``. Setting
    ``num_workers`` there also sets ``persistent_workers`` to ``num_workers > 0`` unless given
    (torch refuses persistent workers without workers)."""
    out = copy.deepcopy(dict(config))
    if _is_loader_object(out):
        out.update(args)
        return out
    if "dataset" not in out:
        raise KeyError(f"loader config {out} has neither a loader 'type' nor a 'dataset'")
    out["dataset"] = dict(out["dataset"])
    for key, value in args.items():
        (out if key in DATALOADER_ARGS else out["dataset"])[key] = value
    if "num_workers" in args and "persistent_workers" not in args:
        out["persistent_workers"] = args["num_workers"] > 0
    return out


__all__ = [
    "DATALOADER_ARGS",
    "DATA_LOADERS",
    "LazyDaliDataLoader",
    "LazyDaliSegLoader",
    "build_dataloader",
    "build_loader",
    "materialize_dataloaders",
    "with_loader_args",
]
