"""Aux heads are registered classes built from config dicts (pure torch, no mmengine).

``HEADS.build(dict(type='ClassifierAuxHead', config='2c2f'), ctx)`` calls the class's
``from_config(ctx, **rest)``: the ``HeadContext`` carries what the learner knows about the
module the head serves (its output's ``FeatureInfo``, its index, K, the number of classes,
the image), so a config names only the head's own choices. A new head is a subclass of
``LocalHead`` decorated with ``@HEADS.register()``; nothing else in the core changes.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from hpff_dist.local.features import FeatureInfo, check_layout

T = TypeVar("T", bound=type)


@dataclass(frozen=True)
class HeadContext:
    """What a head is built for: local module ``module_index`` of a K=``k`` split (the
    nominal K of the split table) whose output is ``feature``; the task's ``num_classes``;
    the input image's channels and (H, W) size (None when the model does not fix it)."""

    feature: FeatureInfo
    module_index: int
    k: int
    num_classes: int
    image_channels: int = 3
    image_size: tuple[int, int] | None = None

    def feature_size(self) -> tuple[int, int]:
        if self.image_size is None:
            raise ValueError("this head needs the model's image_size to size itself")
        return self.feature.spatial_size(self.image_size)


class Registry:
    """Name -> class, with ``build(cfg, ctx)``; unknown names get the closest known one."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._classes: dict[str, type] = {}

    def register(self, name: str | None = None, force: bool = False) -> Callable[[T], T]:
        """Class decorator: ``@HEADS.register()`` or ``@HEADS.register("OtherName")``."""
        if isinstance(name, type):
            raise TypeError("use @HEADS.register() with parentheses")

        def add(cls: T) -> T:
            key = name or cls.__name__
            if key in self._classes and not force and self._classes[key] is not cls:
                raise KeyError(f"{self.kind} {key!r} is already registered")
            self._classes[key] = cls
            return cls

        return add

    def get(self, name: str) -> type:
        if name not in self._classes:
            close = difflib.get_close_matches(name, self._classes, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise KeyError(
                f"unknown {self.kind} {name!r}{hint}; registered: {sorted(self._classes)}"
            )
        return self._classes[name]

    def __contains__(self, name: str) -> bool:
        return name in self._classes

    def names(self) -> list[str]:
        return sorted(self._classes)

    def build(self, cfg: dict[str, Any], ctx: HeadContext) -> Any:
        """``cls.from_config(ctx, **cfg_without_type)``; may be None (a head with nothing to
        do at this module, e.g. InfoPro where both lambdas are 0)."""
        if not isinstance(cfg, dict) or "type" not in cfg:
            raise TypeError(f"a {self.kind} config is a dict with a 'type', got {cfg!r}")
        args = dict(cfg)
        cls = self.get(args.pop("type"))
        check_layout(f"{self.kind} {cls.__name__}", cls.layouts, ctx.feature)
        return cls.from_config(ctx, **args)


HEADS = Registry("aux head")
