"""What we accept in a DeepSpeed config and optim wrapper, and what we fill in.

Everything here is a plain function of dicts (no DeepSpeed or torch import), so the rules are
testable and the config resolution can apply them before any process starts. Each function
records what it changes with a :class:`~hpff_dist.engine.changes.ChangeRecorder` when given one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hpff_dist.engine.changes import UNSET, ChangeRecorder

__all__ = [
    "DEEPSPEED_CONFIG",
    "DEEPSPEED_OPTIM_WRAPPER",
    "DeepSpeedConfigError",
    "check_optim_wrapper_type",
    "translate_optim_wrapper",
    "validate_deepspeed_config",
]

#: the optim wrapper every DeepSpeed run gets, by its scoped registry name.
DEEPSPEED_OPTIM_WRAPPER = "hpff_dist.LocalDeepSpeedOptimWrapper"
# Wrapper types a single-process config may name that mean "plain optimizer step".
_PLAIN_WRAPPERS = {
    "OptimWrapper",
    "DeepSpeedOptimWrapper",
    "LocalDeepSpeedOptimWrapper",
    DEEPSPEED_OPTIM_WRAPPER,
}
#: the prefix under which changes to the config given to ``deepspeed.initialize`` are recorded.
DEEPSPEED_CONFIG = "deepspeed_config"


class DeepSpeedConfigError(ValueError):
    """A DeepSpeed setting that would train the wrong thing or conflicts with ours."""


def validate_deepspeed_config(
    config: dict[str, Any], recorder: ChangeRecorder | None = None
) -> dict[str, Any]:
    """Refuse what is not exact for multi-backward steps, fill what DeepSpeed would default
    wrongly for us; returns ``config`` (modified in place)."""
    recorder = recorder or ChangeRecorder()
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
    recorder.set(
        config,
        "managed_gradient_accumulation",
        False,
        "several backward calls per step: engine.step is the only accumulation boundary",
        f"{DEEPSPEED_CONFIG}.managed_gradient_accumulation",
    )
    if stage == 1 and zero.get("overlap_comm", False):
        raise DeepSpeedConfigError(
            "zero_optimization.overlap_comm=true needs stage 2 with unmanaged accumulation "
            "(DeepSpeed asserts otherwise); drop it or use stage 2"
        )
    if "gradient_clipping" not in config:
        recorder.set(
            config,
            "gradient_clipping",
            0.0,
            "DeepSpeed clips at 1.0 when the key is absent; a config silent on clipping must "
            "not clip",
            f"{DEEPSPEED_CONFIG}.gradient_clipping",
        )
    if "zero_allow_untested_optimizer" not in config:
        recorder.set(
            config,
            "zero_allow_untested_optimizer",
            True,
            "torch's SGD/AdamW see plain fp32 partitions under ZeRO, but are not on "
            "DeepSpeed's allow-list",
            f"{DEEPSPEED_CONFIG}.zero_allow_untested_optimizer",
        )
    return config


def check_optim_wrapper_type(kind: Any) -> str:
    """The name of an optim wrapper type a DeepSpeed run can replace by ours, or
    :class:`DeepSpeedConfigError` saying why it cannot."""
    name = kind if isinstance(kind, str) else kind.__name__
    if name.split(".")[-1] == "AmpOptimWrapper":
        raise DeepSpeedConfigError(
            "AmpOptimWrapper under DeepSpeed: set strategy bf16=dict(enabled=True) instead"
        )
    if name not in _PLAIN_WRAPPERS:
        raise DeepSpeedConfigError(f"optim wrapper {name} cannot drive a DeepSpeed engine")
    return name


def translate_optim_wrapper(
    optim_wrapper: Mapping[str, Any],
    ds_config: dict[str, Any],
    explicit_clip: bool,
    recorder: ChangeRecorder | None = None,
) -> dict[str, Any]:
    """The arguments of ``LocalDeepSpeedOptimWrapper`` for a (single-process) optim wrapper
    config, without ``type``: ``clip_grad`` and ``accumulative_counts`` move into ``ds_config``
    (in place) as DeepSpeed's ``gradient_clipping`` and ``gradient_accumulation_steps``, so a
    single-process config trains the same under DeepSpeed. ``explicit_clip`` says the strategy
    itself set ``gradient_clipping`` (then both must agree)."""
    recorder = recorder or ChangeRecorder()
    cfg = dict(optim_wrapper)
    kind = cfg.pop("type", UNSET)
    name = check_optim_wrapper_type("OptimWrapper" if kind is UNSET else kind)
    if name != DEEPSPEED_OPTIM_WRAPPER:
        recorder.note(
            "optim_wrapper.type",
            kind,
            DEEPSPEED_OPTIM_WRAPPER,
            "the DeepSpeed engine steps the optimizer; LocalDeepSpeedOptimWrapper makes one step "
            "of several backward calls",
        )
    clip = cfg.get("clip_grad")
    if clip is not None:
        if clip.get("type", "norm") != "norm" or float(clip.get("norm_type", 2)) != 2.0:
            raise DeepSpeedConfigError(
                f"DeepSpeed clips by global L2 norm only; clip_grad={clip} cannot be honoured"
            )
        max_norm = float(clip["max_norm"])
        if explicit_clip and float(ds_config["gradient_clipping"]) != max_norm:
            raise DeepSpeedConfigError(
                f"optim_wrapper.clip_grad.max_norm={max_norm} conflicts with strategy "
                f"gradient_clipping={ds_config['gradient_clipping']}; set one of them"
            )
        why = "DeepSpeed clips the global gradient norm itself"
        recorder.pop(cfg, "clip_grad", why, "optim_wrapper.clip_grad")
        recorder.set(
            ds_config, "gradient_clipping", max_norm, why, f"{DEEPSPEED_CONFIG}.gradient_clipping"
        )
    cfg.pop("clip_grad", None)
    counts = cfg.get("accumulative_counts")
    gas = int(ds_config.get("gradient_accumulation_steps", 1))
    why = "DeepSpeed accumulates gradients itself"
    if counts is not None:
        recorder.pop(cfg, "accumulative_counts", why, "optim_wrapper.accumulative_counts")
    if counts is not None and int(counts) != 1:
        if gas not in (1, int(counts)):
            raise DeepSpeedConfigError(
                f"optim_wrapper.accumulative_counts={counts} conflicts with "
                f"gradient_accumulation_steps={gas}"
            )
        gas = int(counts)
        recorder.set(
            ds_config,
            "gradient_accumulation_steps",
            gas,
            why,
            f"{DEEPSPEED_CONFIG}.gradient_accumulation_steps",
        )
    recorder.set(
        cfg,
        "accumulation_steps",
        gas,
        "the wrapper steps the engine once per accumulation window",
        "optim_wrapper.accumulation_steps",
    )
    return cfg
