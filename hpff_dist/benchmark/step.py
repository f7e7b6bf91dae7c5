"""Measure one config's training step on synthetic data: time, saved bytes, aux bytes, RSS.

Everything is built from the experiment config (model, optim wrapper) exactly as training
would, but batches are random tensors of the config's input shape, so no dataset is needed:
``[images, labels]`` for classifiers, mmseg's ``dict(inputs=[uint8 CHW], data_samples=
[SegDataSample])`` for segmentors (``LocalEncoderDecoder``), which go through the model's own
data preprocessor as a training batch does.
"""

from __future__ import annotations

import contextvars
import resource
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from torch import Tensor, nn

from hpff_dist import compat
from hpff_dist.engine.cpu_malloc import configure_cpu_malloc
from hpff_dist.local.heads import LocalHead, NetHead
from hpff_dist.local.memory import SavedTensorMeter
from hpff_dist.registry import MODELS

#: share of pixels labelled ``ignore_index`` in synthetic label maps (Cityscapes' void is
#: about this common), so the losses' ignore path runs as on real data.
IGNORED_PIXELS = 0.1


def image_size(cfg: Config) -> tuple[int, int]:
    """(height, width) of the model's training input: ``model.image_size``, an int (square,
    classifiers) or an (H, W) pair (segmentors' crop); 32 when unset."""
    size = cfg.model.get("image_size", 32)
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


def input_shape(cfg: Config) -> tuple[int, int, int]:
    """(channels, height, width) the config's model trains on."""
    channels = len(cfg.model.get("data_preprocessor", {}).get("mean", [0, 0, 0]))
    return (channels, *image_size(cfg))


def is_segmentor(model: nn.Module) -> bool:
    """An mmseg segmentor (``LocalEncoderDecoder``): it trains on mmseg's batch format."""
    return hasattr(model, "decode_head") and hasattr(model, "learner")


def segmentation_batch(
    batch_size: int,
    shape: tuple[int, int, int],
    num_classes: int,
    ignore_index: int = 255,
    generator: torch.Generator | None = None,
) -> dict[str, list]:
    """A training batch as mmseg's ``PackSegInputs`` + ``pseudo_collate`` make it: uint8 CHW
    images and ``SegDataSample``s whose ``gt_sem_seg`` is a (1, H, W) label map with classes
    ``0..num_classes-1`` and ``IGNORED_PIXELS`` of ``ignore_index``."""
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    c, h, w = shape
    inputs, samples = [], []
    for _ in range(batch_size):
        inputs.append(torch.randint(0, 256, (c, h, w), dtype=torch.uint8, generator=generator))
        labels = torch.randint(0, num_classes, (1, h, w), generator=generator)
        labels[torch.rand(1, h, w, generator=generator) < IGNORED_PIXELS] = ignore_index
        sample = SegDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w)))
        sample.gt_sem_seg = PixelData(data=labels)
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def synthetic_batch(model: nn.Module, cfg: Config, batch_size: int) -> Any:
    """The batch ``model.train_step`` takes, random, at the config's input shape."""
    shape = input_shape(cfg)
    if is_segmentor(model):
        head = model.decode_head
        return segmentation_batch(batch_size, shape, int(head.num_classes), head.ignore_index)
    num_classes = cfg.model.get("num_classes", 10)
    return [torch.rand(batch_size, *shape), torch.randint(0, num_classes, (batch_size,))]


def norm_layers(model: nn.Module) -> dict[str, int]:
    """How many normalisation layers of each class the built model has (``SyncBatchNorm``
    absent on the CPU: ``resolve_config`` turned ``SyncBN`` into ``BN``, as a run does)."""
    kinds = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
    return dict(Counter(type(m).__name__ for m in model.modules() if isinstance(m, kinds)))


#: the part of the model running now (innermost labelled module), for ``PartMeter``.
_PART: contextvars.ContextVar[str | None] = contextvars.ContextVar("bench_part", default=None)
#: how many of the largest saved tensors alive at the peak ``measure_step`` lists.
LARGEST_AT_PEAK = 10


def model_parts(learner: nn.Module) -> list[tuple[str, nn.Module]]:
    """(label, module) for every part of a ``LocalLearner`` worth telling apart in memory:
    the backbone layers of local module ``m`` (``module<m>``, the stem in ``module0``; E2E is
    one module), the network's head (``net_head``: ASPP, a classifier; also the last module's
    ``NetHead``, whose task loss it then covers), each aux head (``head:<name>``, e.g.
    ``head:ind1``) and each tap (``tap:<name>``: mmseg's FCN head with its loss), with all
    their submodules (PFF and InfoPro heads call their parts, not themselves)."""
    net, plan = learner.net, learner.plan
    taps = {tap.name for tap in learner.taps}
    parts: list[tuple[str, nn.Module]] = [("module0", net.stem)]
    for m, blocks in enumerate(plan.modules):
        parts += [(f"module{m}", net.blocks[b]) for b in blocks]
    parts.append(("net_head", net.head))
    for mod in learner.local_modules:
        parts += [("net_head", lv.head) for lv in mod.levels if isinstance(lv.head, NetHead)]
    for name, head in learner.heads.items():
        label = f"tap:{name}" if name in taps else f"head:{name}"
        parts += [(label, module) for module in head.modules()]
    seen: set[int] = set()
    unique = []
    for label, module in parts:
        if id(module) not in seen:
            seen.add(id(module))
            unique.append((label, module))
    return unique


def _labelled(label: str, method: Any) -> Any:
    def run(*args: Any, **kwargs: Any) -> Any:
        token = _PART.set(label)
        try:
            return method(*args, **kwargs)
        finally:
            _PART.reset(token)

    return run


@contextmanager
def labelled_parts(parts: list[tuple[str, nn.Module]]) -> Iterator[None]:
    """While inside, every call of a listed module (and what it calls) runs under its label;
    the innermost labelled module wins. A head's ``accumulate`` is labelled too: the schedules
    call it rather than the head, and PFF and InfoPro heads compute their losses (and InfoPro
    its fused upsample-conv) there, outside any submodule's call."""
    handles = []
    wrapped = []
    for label, module in parts:
        tokens: list[contextvars.Token] = []

        def enter(mod: nn.Module, args: Any, label: str = label, tokens: list = tokens) -> None:
            tokens.append(_PART.set(label))

        def leave(mod: nn.Module, args: Any, out: Any, tokens: list = tokens) -> None:
            _PART.reset(tokens.pop())

        handles.append(module.register_forward_pre_hook(enter))
        handles.append(module.register_forward_hook(leave, always_call=True))
        if isinstance(module, LocalHead):
            object.__setattr__(module, "accumulate", _labelled(label, module.accumulate))
            wrapped.append(module)
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for module in wrapped:
            object.__delattr__(module, "accumulate")


def part_group(part: str) -> str:
    """``backbone`` (``module<m>``), ``net_head``, ``aux_heads`` (``head:*``), ``taps``
    (``tap:*``) or ``unlabelled``: the groups whose own peaks compare across methods (the
    schedules' ``aux`` region holds the last module's task head too, E2E's does not)."""
    if part.startswith("module"):
        return "backbone"
    if part.startswith("head:"):
        return "aux_heads"
    if part.startswith("tap:"):
        return "taps"
    return part if part == "net_head" else "unlabelled"


class PartMeter(SavedTensorMeter):
    """``SavedTensorMeter`` that also says what the live saved bytes were at the peak: bytes
    per model part (``labelled_parts``; bytes saved outside every labelled module, e.g. a task
    loss computed after the head, count as ``'<region> unlabelled'``) and the largest tensors,
    and keeps each part group's own peak (``group_peak_bytes``, see ``part_group``). This is
    what tells *why* a method's peak is where it is."""

    def __init__(self, ignore: Any = None) -> None:
        super().__init__(ignore)
        self._info: dict[Any, tuple[str, tuple[int, ...], str]] = {}
        self.part_live_bytes: dict[str, int] = {}
        self.parts_at_peak: dict[str, int] = {}
        self.group_live_bytes: dict[str, int] = {}
        self.group_peak_bytes: dict[str, int] = {}
        self._largest_at_peak: list[tuple[Any, tuple[str, tuple[int, ...], str]]] = []

    def _pack(self, t: Tensor) -> Any:
        before, peak = len(self._entries), self.peak_bytes
        holder = super()._pack(t)
        if holder.key is not None and len(self._entries) > before:
            entry = self._entries[holder.key]
            part = _PART.get() or f"{entry[2]} unlabelled"
            self._info[holder.key] = (part, tuple(t.shape), str(t.dtype).removeprefix("torch."))
            self.part_live_bytes[part] = self.part_live_bytes.get(part, 0) + entry[1]
            group = part_group(part)
            live = self.group_live_bytes.get(group, 0) + entry[1]
            self.group_live_bytes[group] = live
            self.group_peak_bytes[group] = max(self.group_peak_bytes.get(group, 0), live)
            if self.peak_bytes > peak:
                self.parts_at_peak = dict(self.part_live_bytes)
                self._largest_at_peak = list(self._info.items())
        return holder

    def _release(self, key: Any) -> None:
        entry = self._entries.get(key)
        if entry is not None and entry[0] == 1:
            part = self._info.pop(key)[0]
            self.part_live_bytes[part] -= entry[1]
            self.group_live_bytes[part_group(part)] -= entry[1]
        super()._release(key)

    def largest_at_peak(self, count: int = LARGEST_AT_PEAK) -> list[dict[str, Any]]:
        """The ``count`` largest storages alive at the peak: part, shape (of the first tensor
        saved on that storage), dtype, bytes."""
        rows = [
            dict(part=part, shape=list(shape), dtype=dtype, bytes=key[2])
            for key, (part, shape, dtype) in self._largest_at_peak
        ]
        return sorted(rows, key=lambda r: -r["bytes"])[:count]


def measure_step(
    cfg: Config, batch_size: int, iters: int, warmup: int = 2, seed: int = 0
) -> dict[str, Any]:
    """One metered step (saved bytes, per region and part), then ``warmup`` untimed steps and
    the median time of ``iters`` more. The metered step comes first because it doubles as a
    warm-up (allocations, oneDNN kernels), which matters where one step takes minutes
    (DeepLabV3-R101 at 512x1024 on 2 cores); saved bytes do not depend on the step's order.
    On a GPU node the model runs there and ``cuda_max_allocated_bytes`` (of the metered
    step) is what the paper reports."""
    if iters < 1:
        raise ValueError(f"iters must be >= 1 to take a median, got {iters}")
    compat.apply_all()  # an entry point that builds models without build_runner
    torch.manual_seed(seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cpu_malloc = configure_cpu_malloc(cfg.get("cpu_malloc"))
    model = MODELS.build(cfg.model).to(device)
    model.train()
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    data = synthetic_batch(model, cfg, batch_size)
    learner = model.learner
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with labelled_parts(model_parts(learner)), PartMeter(ignore=model) as meter:
        model.train_step(data, optim_wrapper)
    cuda_max = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    times, cpu_times = [], []
    for i in range(warmup + iters):
        start, cpu_start = time.perf_counter(), time.process_time()
        model.train_step(data, optim_wrapper)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    spec = learner.spec
    return {
        "method": spec.method,
        "schedule": spec.schedule,
        "k": learner.plan.k if not spec.is_e2e else 1,
        "modules": learner.plan.num_modules,
        "task": "segmentation" if is_segmentor(model) else "classification",
        "batch_size": batch_size,
        "input_shape": list(input_shape(cfg)),
        "step_time_s": statistics.median(times),
        "step_times_s": times,
        # CPU seconds of the process (all threads) per step: on a shared machine the wall time
        # grows with the other jobs' load, this much less (threads x wall when it runs alone)
        "step_cpu_time_s": statistics.median(cpu_times),
        "peak_saved_bytes": meter.peak_bytes,
        "aux_peak_saved_bytes": meter.region_peak_bytes.get("aux", 0),
        # peak of the bytes saved outside the schedules' "aux" region: the backbone's share
        # (E2E's also holds the network's head and task loss, which local learning runs in it)
        "backbone_peak_saved_bytes": meter.region_peak_bytes.get("other", 0),
        # each part group's own peak: "backbone" is the backbone layers' alone in every method
        "group_peak_saved_bytes": dict(sorted(meter.group_peak_bytes.items())),
        # what was alive when the total peaked: bytes per model part, the largest tensors
        "peak_parts_bytes": {
            part: n for part, n in sorted(meter.parts_at_peak.items(), key=lambda kv: -kv[1]) if n
        },
        "peak_largest_saved": meter.largest_at_peak(),
        # ru_maxrss is KiB on Linux: the whole process's peak, what a user sees.
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "threads": torch.get_num_threads(),
        "cpu_malloc": cfg.get("cpu_malloc") if cpu_malloc else None,
        "device": device.type,
        "norm_layers": norm_layers(model),
        "cuda_max_allocated_bytes": cuda_max,
    }
