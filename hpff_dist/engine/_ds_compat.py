"""Workarounds for mmengine 0.10.7's DeepSpeed strategy (kept apart until the lead moves them
into ``hpff_dist.compat``)."""

from __future__ import annotations

_done: set[str] = set()


def register_deepspeed_optimizers_once() -> None:
    """mmengine's ``DeepSpeedStrategy.__init__`` registers DeepSpeed's optimizers without
    ``force``, so a second strategy in one process (a resumed run, a test sweeping ZeRO stages,
    a benchmark) dies with ``KeyError: DeepSpeedCPUAdam is already registered``. We make the
    registration happen once and return the same names afterwards."""
    if "register_once" in _done:
        return
    _done.add("register_once")
    import mmengine._strategy.deepspeed as ms_deepspeed

    original = ms_deepspeed.register_deepspeed_optimizers
    names: list[str] = []

    def register_once() -> list[str]:
        if not names:
            names.extend(original())
        return list(names)

    register_once.__wrapped__ = original  # type: ignore[attr-defined]
    ms_deepspeed.register_deepspeed_optimizers = register_once


def apply() -> None:
    register_deepspeed_optimizers_once()
