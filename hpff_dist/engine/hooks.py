"""Progress figures mmengine does not log on the CPU: images/s and process memory."""

from __future__ import annotations

import time

import psutil
import torch
from mmengine.hooks import Hook

from hpff_dist.registry import HOOKS


def _batch_size(data_batch) -> int:
    """Images in a batch: ``images`` (ours), mmseg's ``inputs`` list, or a (images, ...) pair."""
    if isinstance(data_batch, dict):
        first = data_batch["images"] if "images" in data_batch else data_batch["inputs"]
    else:
        first = data_batch[0]
    return len(first)


@HOOKS.register_module()
class ThroughputHook(Hook):
    """Logs ``img_per_s`` (this rank) and memory (CUDA max allocated, else RSS) in MiB."""

    priority = "NORMAL"

    def __init__(self) -> None:
        self._start = 0.0
        self._process = psutil.Process()

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        self._start = time.perf_counter()

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        elapsed = max(time.perf_counter() - self._start, 1e-9)
        hub = runner.message_hub
        if data_batch is not None:
            hub.update_scalar("train/img_per_s", _batch_size(data_batch) / elapsed)
        if not torch.cuda.is_available():
            hub.update_scalar("train/rss_mb", self._process.memory_info().rss / 2**20)
