"""Batch arithmetic of a distributed run, stated once.

**global batch = per-device batch x world size x accumulation steps.** The per-device batch is
``train_dataloader.batch_size``. A user may state any of the other numbers too (our
``strategy.global_batch_size``, DeepSpeed's ``train_batch_size`` and
``train_micro_batch_size_per_gpu``); numbers that do not multiply out raise
:class:`BatchConfigError` naming them, instead of training on a batch nobody asked for.
Pure arithmetic: nothing here imports torch or DeepSpeed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["BatchConfigError", "per_device_batch", "resolve_batch_config"]


class BatchConfigError(ValueError):
    """Per-device batch, world size, accumulation and global batch do not multiply out."""


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
