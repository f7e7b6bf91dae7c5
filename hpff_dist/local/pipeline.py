"""A pipeline of local modules: the K modules cut into P contiguous stages, one per process.

Gradient isolation means module i never waits for the backward of modules i+1..K, so stage s
can train micro-batch m+1 while stage s+1 trains micro-batch m. What crosses a stage boundary:

* forward: the last module's output of stage s (detached), to stage s+1;
* backward, only when the first module of stage s+1 sends a cascade gradient (HiLo): h, the
  gradient of its cascade loss w.r.t. its input, back to stage s, whose last module's graph of
  that micro-batch then runs its one backward (independent + cascade cotangent + h).

The schedule (``pipeline_stage_step``) is synchronous and exact: per micro-batch it is the
one-forward schedule (``hpff_dist.local.schedule.run_modules``) of the stage's modules, every
loss weighted by the micro-batch's share of the batch, so the gradients after all micro-batches
equal those of the single-process one-forward schedule run on the same micro-batches with
gradient accumulation (BatchNorm sees the same micro-batches). A stage keeps at most two
micro-batches' last-module graphs waiting for h: it posts the receive of h for micro-batch m,
trains micro-batch m+1, then waits. Messages are ``torch.distributed`` point-to-point
(``batch_isend_irecv``): gloo on CPUs, NCCL on GPUs.

Only torch is imported; which ranks form a stage's neighbours and data-parallel group is the
engine's business (``StageLink`` just names the neighbours' global ranks).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from hpff_dist.local.backward import Backward
from hpff_dist.local.heads import NetHead
from hpff_dist.local.module import LocalModule
from hpff_dist.local.schedule import StepOutput, _finish, _Totals, run_modules

__all__ = [
    "MicroBatch",
    "PipelineStage",
    "StageLink",
    "WeightedBackward",
    "balanced_stages",
    "micro_batches",
    "module_costs",
    "pipeline_forward",
    "pipeline_stage_step",
    "stage_bounds_from_sizes",
    "stage_modules_of",
]

#: shape header of an activation message: [dtype code, ndim, dims..., padding].
_HEADER_LEN = 10
_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


# ----------------------------------------------------------------------------- stages
def balanced_stages(costs: Sequence[float], stages: int) -> list[tuple[int, int]]:
    """Contiguous ``[start, end)`` module ranges, one per stage, that minimise the largest
    stage cost (the pipeline's step time is its slowest stage's). Exact: a binary search over
    the answer is not needed for K <= a few hundred; this is the O(P K^2) dynamic programme."""
    k = len(costs)
    if not 1 <= stages <= k:
        raise ValueError(f"cannot cut {k} local modules into {stages} stages (need 1 <= P <= K)")
    prefix = [0.0]
    for c in costs:
        if c < 0:
            raise ValueError(f"module costs must be >= 0, got {list(costs)}")
        prefix.append(prefix[-1] + float(c))
    inf = float("inf")
    # best[p][i]: the least max-stage cost of the first i modules in p stages; cut[p][i]: its
    # last stage's start.
    best = [[inf] * (k + 1) for _ in range(stages + 1)]
    cut = [[0] * (k + 1) for _ in range(stages + 1)]
    best[0][0] = 0.0
    for p in range(1, stages + 1):
        for i in range(p, k - (stages - p) + 1):
            for j in range(p - 1, i):
                value = max(best[p - 1][j], prefix[i] - prefix[j])
                if value < best[p][i]:
                    best[p][i], cut[p][i] = value, j
    bounds, end = [], k
    for p in range(stages, 0, -1):
        start = cut[p][end]
        bounds.append((start, end))
        end = start
    return bounds[::-1]


def module_costs(
    modules: Sequence[LocalModule],
    batch: MicroBatch,
    backward: Backward,
    repeats: int = 3,
) -> list[float]:
    """Seconds of each module's local step (forward, heads, backward) on ``batch``, the median
    of ``repeats`` runs after one warm-up: what ``balanced_stages`` balances. It fills gradients
    (zero them after) and updates BatchNorm statistics (measure on a copy, or before training)."""
    costs: list[list[float]] = [[] for _ in modules]
    for run in range(repeats + 1):
        x = batch.inputs
        for i, mod in enumerate(modules):
            _synchronize(x)
            start = time.perf_counter()
            a, pending, _ = run_modules(
                [mod], x, batch.targets, batch.image, backward, _Totals(), input_is_images=i == 0
            )
            _finish(pending, backward)
            _synchronize(x)
            if run:
                costs[i].append(time.perf_counter() - start)
            x = a.detach()
    return [sorted(c)[len(c) // 2] for c in costs]


def _synchronize(x: Tensor) -> None:
    """Wait for the GPU's queued work (timing CUDA kernels from the host needs it)."""
    if x.is_cuda:
        torch.cuda.synchronize(x.device)


def stage_bounds_from_sizes(sizes: Sequence[int], num_modules: int) -> list[tuple[int, int]]:
    """``[start, end)`` ranges from modules per stage (``stage_modules=[28, 27]`` in a config)."""
    if any(int(n) < 1 for n in sizes) or sum(sizes) != num_modules:
        raise ValueError(
            f"pipeline stage_modules={list(sizes)} must be >= 1 each and add up to the "
            f"{num_modules} local modules"
        )
    bounds, start = [], 0
    for n in sizes:
        bounds.append((start, start + int(n)))
        start += int(n)
    return bounds


def stage_modules_of(modules: Sequence[LocalModule]) -> list[torch.nn.Module]:
    """The ``nn.Module`` objects a stage of ``modules`` trains: their layers and the heads of
    their levels and taps (the last module's level head is the network's own classifier).
    Every parameter and buffer of a stage lives in one of them."""
    found: dict[int, Any] = {}
    for mod in modules:
        heads = [lv.head for lv in mod.levels if lv.head is not None]
        heads += [tap.head for tap in mod.taps]
        # The task's head wraps the network's classifier without owning it (``NetHead``).
        parts = list(mod.layers) + heads
        parts += [h.classifier for h in heads if isinstance(h, NetHead)]
        for part in parts:
            found.setdefault(id(part), part)
    return list(found.values())


# ----------------------------------------------------------------------------- micro-batches
@dataclass
class MicroBatch:
    """A slice of the batch and its share of it (``weight = len / len(batch)``)."""

    inputs: Tensor
    targets: Any
    image: Tensor | None
    weight: float


def _slice(value: Any, start: int, end: int) -> Any:
    if value is None:
        return None
    if isinstance(value, Tensor):
        return value[start:end]
    if isinstance(value, (list, tuple)):
        return type(value)(value[start:end]) if isinstance(value, list) else value[start:end]
    raise TypeError(f"cannot cut {type(value).__name__} into micro-batches (tensor or list)")


def micro_batches(
    inputs: Tensor, targets: Any, image: Tensor | None, count: int
) -> list[MicroBatch]:
    """The batch cut into ``count`` contiguous micro-batches of sizes differing by at most one
    (``torch.tensor_split``'s sizes), each weighted by its share, so the weighted sum of
    per-micro-batch mean losses is the batch's mean loss."""
    size = inputs.shape[0]
    if not 1 <= count <= size:
        raise ValueError(
            f"pipeline micro_batches={count} must be between 1 and the per-replica batch {size}"
        )
    sizes = [len(part) for part in torch.arange(size).tensor_split(count)]
    out, start = [], 0
    for n in sizes:
        end = start + n
        out.append(
            MicroBatch(
                inputs[start:end], _slice(targets, start, end), _slice(image, start, end), n / size
            )
        )
        start = end
    return out


class WeightedBackward:
    """``backward`` with every loss (and cotangent) multiplied by ``weight``: gradient
    accumulation over micro-batches. ``scale`` includes the weight, so the schedule's cotangents
    read back from ``.grad`` are un-scaled to true size as usual."""

    def __init__(self, inner: Backward, weight: float) -> None:
        self.inner = inner
        self.weight = float(weight)
        self.scale = float(inner.scale) * self.weight
        if getattr(inner, "vjp", None) is not None:
            self.vjp = self._vjp

    def __call__(self, loss: Tensor) -> None:
        self.inner(loss * self.weight)

    def _vjp(self, output: Tensor, cotangent: Tensor, inputs: Sequence[Tensor] | None) -> None:
        self.inner.vjp(output, cotangent * self.weight, inputs)


# ----------------------------------------------------------------------------- messages
def complete_sends(sends: list[Any]) -> None:
    """Wait for the works among ``sends`` (the ``send_*`` methods return their works followed
    by the buffers that must stay alive until those complete)."""
    for item in sends:
        if hasattr(item, "wait"):
            item.wait()


def cascade_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a cascade gradient travels in: float32 for half-precision activations (the
    schedule un-scales cotangents into float32, ``schedule._unscale``), else the activation's."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


@dataclass
class StageLink:
    """A stage's place in its pipeline: global ranks of the stages before and after it (None at
    the ends), and whether the next stage's first module sends a cascade gradient back.
    ``group``: the process group the ranks belong to (None: the default group)."""

    stage: int
    stages: int
    prev_rank: int | None
    next_rank: int | None
    receives_cascade: bool
    group: Any = None
    #: the replica's stages as a process group and the last stage's global rank: inference
    #: broadcasts the logits from there, so every stage returns them (None: one stage).
    pipe_group: Any = None
    last_rank: int | None = None
    #: a second group for the cascade gradients (None: ``group``): on NCCL each group is one
    #: stream, so h no longer queues behind the next activation in the other direction.
    h_group: Any = None

    def __post_init__(self) -> None:
        if (self.prev_rank is None) != (self.stage == 0):
            raise ValueError(f"stage {self.stage}: prev_rank must be None exactly at stage 0")
        if (self.next_rank is None) != (self.stage == self.stages - 1):
            raise ValueError(
                f"stage {self.stage}: next_rank must be None exactly at the last stage"
            )
        if self.next_rank is None and self.receives_cascade:
            raise ValueError("the last stage receives no cascade gradient")

    def _wait(self, ops: list[dist.P2POp]) -> None:
        for work in dist.batch_isend_irecv(ops):
            work.wait()

    def _header(self, tensor: Tensor) -> Tensor:
        if tensor.dim() > _HEADER_LEN - 2:
            raise ValueError(f"cannot send a {tensor.dim()}-d activation")
        header = [_DTYPES.index(tensor.dtype), tensor.dim(), *tensor.shape]
        return torch.tensor(header + [0] * (_HEADER_LEN - len(header)), dtype=torch.int64)

    def send_activation(self, tensor: Tensor) -> list[Any]:
        """Post the sends of ``tensor`` (shape header, then data) to the next stage. Two
        calls, as the receiver makes two (it sizes its buffer from the header): NCCL matches
        point-to-point groups call by call."""
        tensor = tensor.detach().contiguous()
        header = self._header(tensor).to(tensor.device)
        works = dist.batch_isend_irecv([dist.P2POp(dist.isend, header, self.next_rank, self.group)])
        works += dist.batch_isend_irecv(
            [dist.P2POp(dist.isend, tensor, self.next_rank, self.group)]
        )
        return [*works, header, tensor]  # keep the buffers alive until the sends complete

    @staticmethod
    def _empty_from_header(header: Tensor, device: torch.device) -> Tensor:
        """A buffer of the dtype and shape a header (``_header``) describes."""
        code, ndim, *dims = header.tolist()
        return torch.empty(dims[:ndim], dtype=_DTYPES[code], device=device)

    def recv_activation(self, device: torch.device) -> Tensor:
        header = torch.empty(_HEADER_LEN, dtype=torch.int64, device=device)
        self._wait([dist.P2POp(dist.irecv, header, self.prev_rank, self.group)])
        tensor = self._empty_from_header(header, device)
        self._wait([dist.P2POp(dist.irecv, tensor, self.prev_rank, self.group)])
        return tensor

    @property
    def _h_group(self) -> Any:
        return self.h_group if self.h_group is not None else self.group

    def send_cascade(self, h: Tensor) -> list[Any]:
        h = h.detach().to(cascade_dtype(h.dtype)).contiguous()
        op = dist.P2POp(dist.isend, h, self.prev_rank, self._h_group)
        return [*dist.batch_isend_irecv([op]), h]

    def post_recv_cascade(self, like: Tensor) -> tuple[list[Any], Tensor]:
        """Post the receive of the cascade gradient for ``like`` (the last module's output).
        Returns the works to wait for and the buffer they fill: the output's shape, in
        :func:`cascade_dtype` (the schedule keeps un-scaled cotangents in float32 under
        bf16/fp16, in one process and here alike)."""
        buffer = torch.empty(like.shape, dtype=cascade_dtype(like.dtype), device=like.device)
        op = dist.P2POp(dist.irecv, buffer, self.next_rank, self._h_group)
        return dist.batch_isend_irecv([op]), buffer

    def broadcast_from_last(self, tensor: Tensor | None, device: torch.device) -> Tensor:
        """``tensor`` (given on the last stage) on every stage of the pipeline."""
        is_last = self.next_rank is None
        if self.stages == 1:
            assert tensor is not None
            return tensor
        header = (
            self._header(tensor).to(device)
            if is_last
            else torch.empty(_HEADER_LEN, dtype=torch.int64, device=device)
        )
        dist.broadcast(header, self.last_rank, group=self.pipe_group)
        if not is_last:
            tensor = self._empty_from_header(header, device)
        tensor = tensor.contiguous()
        dist.broadcast(tensor, self.last_rank, group=self.pipe_group)
        return tensor


@torch.no_grad()
def pipeline_forward(
    modules: Sequence[LocalModule], link: StageLink, inputs: Tensor, head: torch.nn.Module
) -> Tensor:
    """Inference through the pipeline: each stage runs its modules on what the stage before
    sent (stage 0: ``inputs``), the last one applies ``head`` (the network's classifier), and
    the result is broadcast to every stage, so each returns the same predictions."""
    x = inputs if link.prev_rank is None else link.recv_activation(inputs.device)
    for mod in modules:
        x = mod(x)
    if link.next_rank is not None:
        complete_sends(link.send_activation(x))
        return link.broadcast_from_last(None, inputs.device)
    return link.broadcast_from_last(head(x), inputs.device)


@dataclass
class PipelineStage:
    """A learner's place in a pipeline (``LocalLearner.pipeline``, set by the engine after
    ``keep_modules``): its link and how many micro-batches a batch is cut into."""

    link: StageLink
    micro_batches: int


# ----------------------------------------------------------------------------- the schedule
def _combine(results: list[StepOutput], weights: list[float]) -> StepOutput:
    """Weighted sums of the micro-batches' losses (the batch's mean losses); logits joined."""

    def weighted(dicts: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for d, w in zip(dicts, weights):
            for key, value in d.items():
                out[key] = out[key] + w * value if key in out else w * value
        return out

    width = max(len(r.per_module) for r in results)
    per_module = [
        weighted([r.per_module[i] if i < len(r.per_module) else {} for r in results])
        for i in range(width)
    ]
    logits = [r.logits for r in results]
    joined = torch.cat(logits) if all(t is not None for t in logits) else None
    return StepOutput(weighted([r.losses for r in results]), joined, per_module)


def pipeline_stage_step(
    modules: Sequence[LocalModule],
    link: StageLink,
    batches: Sequence[MicroBatch],
    backward: Backward,
) -> StepOutput:
    """This stage's part of one training step over ``batches`` (every stage of a pipeline
    gets the same micro-batches: stage 0 feeds their inputs to its modules, the others read
    only their targets and images). Fills this stage's gradients; no optimizer step.

    Returns the micro-batches' losses of this stage's modules, weighted into batch means
    (``per_module`` indexed by global module index), and the logits when this is the last stage.
    """
    if not modules:
        raise ValueError(f"pipeline stage {link.stage} holds no local module")
    owes_h = link.prev_rank is not None and modules[0].sends_cascade
    device = batches[0].inputs.device
    results: list[StepOutput] = []
    in_flight: list[Any] = []  # this micro-batch's sends, alive until they complete
    older: deque[list[Any]] = deque()  # the sends of the micro-batches before
    waiting: deque[tuple[Any, list[Any], Tensor, Backward]] = deque()

    def send_h(h: Tensor) -> None:  # the stage before waits for it: send at once
        in_flight.extend(link.send_cascade(h))

    def send_output(a: Tensor) -> None:  # the next stage can start before our heads run
        in_flight.extend(link.send_activation(a))

    def finish_oldest() -> None:
        pending, works, h, mb_backward = waiting.popleft()
        for work in works:
            work.wait()
        pending.cotangent = h if pending.cotangent is None else pending.cotangent + h
        _finish(pending, mb_backward)

    for mb in batches:
        if len(older) > 1:  # micro-batch m-2's messages: long received, free them
            complete_sends(older.popleft())
        mb_backward = WeightedBackward(backward, mb.weight)
        totals = _Totals()
        x = mb.inputs if link.prev_rank is None else link.recv_activation(device)
        a, pending, h_first = run_modules(
            modules,
            x,
            mb.targets,
            mb.image,
            mb_backward,
            totals,
            input_is_images=link.prev_rank is None,
            on_h_first=send_h if owes_h else None,
            on_output=send_output if link.next_rank is not None else None,
        )
        if owes_h and h_first is None:  # no cascade loss reached x: h is zero, still owed
            send_h(torch.zeros(x.shape, dtype=cascade_dtype(x.dtype), device=x.device))
        if link.receives_cascade:
            works, h = link.post_recv_cascade(a)
            waiting.append((pending, works, h, mb_backward))
            if len(waiting) > 1:  # micro-batch m-1's h: the next stage computed it meanwhile
                finish_oldest()
        else:
            _finish(pending, mb_backward)
        results.append(totals.result())
        older.append(in_flight)
        in_flight = []
    while waiting:
        finish_oldest()
    while older:
        complete_sends(older.popleft())
    return _combine(results, [mb.weight for mb in batches])
