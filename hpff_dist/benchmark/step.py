"""Measure one config's training step on synthetic data: time, saved bytes, aux bytes, RSS.

Everything is built from the experiment config (model, optim wrapper) exactly as training
would, but batches are random tensors of the config's input shape, so no dataset is needed.
"""

from __future__ import annotations

import resource
import statistics
import time
from typing import Any

import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper

from hpff_dist import compat
from hpff_dist.engine.cpu_malloc import configure_cpu_malloc
from hpff_dist.local.memory import SavedTensorMeter
from hpff_dist.registry import MODELS


def input_shape(cfg: Config) -> tuple[int, int, int]:
    """(channels, height, width) the config's model trains on."""
    channels = len(cfg.model.get("data_preprocessor", {}).get("mean", [0, 0, 0]))
    size = cfg.model.get("image_size", 32)
    return channels, size, size


def measure_step(
    cfg: Config, batch_size: int, iters: int, warmup: int = 2, seed: int = 0
) -> dict[str, Any]:
    """Median step time over ``iters`` after ``warmup`` steps, then one metered step. On a GPU
    node the model runs there and ``cuda_max_allocated_bytes`` is what the paper reports."""
    if iters < 1:
        raise ValueError(f"iters must be >= 1 to take a median, got {iters}")
    compat.apply_all()  # an entry point that builds models without build_runner
    torch.manual_seed(seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cpu_malloc = configure_cpu_malloc(cfg.get("cpu_malloc"))
    model = MODELS.build(cfg.model).to(device)
    model.train()
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    c, h, w = input_shape(cfg)
    num_classes = cfg.model.get("num_classes", 10)
    data = [torch.rand(batch_size, c, h, w), torch.randint(0, num_classes, (batch_size,))]
    times = []
    for i in range(warmup + iters):
        start = time.perf_counter()
        model.train_step(data, optim_wrapper)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with SavedTensorMeter(ignore=model) as meter:
        model.train_step(data, optim_wrapper)
    learner = model.learner
    spec = learner.spec
    return {
        "method": spec.method,
        "schedule": spec.schedule,
        "k": learner.plan.k if not spec.is_e2e else 1,
        "modules": learner.plan.num_modules,
        "batch_size": batch_size,
        "input_shape": [c, h, w],
        "step_time_s": statistics.median(times),
        "step_times_s": times,
        "peak_saved_bytes": meter.peak_bytes,
        "aux_peak_saved_bytes": meter.region_peak_bytes.get("aux", 0),
        # peak of the bytes saved outside the aux heads: the backbone's own share
        "backbone_peak_saved_bytes": meter.region_peak_bytes.get("other", 0),
        # ru_maxrss is KiB on Linux: the whole process's peak, what a user sees.
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "threads": torch.get_num_threads(),
        "cpu_malloc": cfg.get("cpu_malloc") if cpu_malloc else None,
        "device": device.type,
        "cuda_max_allocated_bytes": (
            torch.cuda.max_memory_allocated() if device.type == "cuda" else None
        ),
    }
