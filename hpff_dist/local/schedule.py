"""Training schedules: how one batch turns into backward calls through the local modules.

All schedules follow the engine contract (``hpff_dist.local.backward``): they never call
``.backward()`` themselves, only ``backward(loss)``, and divide cotangents read back from
``.grad`` by ``backward.scale`` before re-using them. They do not step optimizers.

* ``e2e_step``: plain backprop through the whole network.
* ``one_forward_step``: HiLo (and, with the cascade level off, DGL / InfoPro) with one forward
  per module, as METHOD.md "One forward per module" describes.
* ``reference_step``: the reference code's three forward paths per module, written plainly, so
  tests and benchmarks can run it beside ours.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hpff_dist.local.backward import Backward, backward_vjp_many
from hpff_dist.local.heads import HeadOutput, LocalHead, TaskLoss
from hpff_dist.local.memory import memory_region
from hpff_dist.local.module import BlockTap, LocalModule, ModuleLevel, ModuleTap


@dataclass
class StepOutput:
    """Detached results of one step. Keys of ``losses`` containing 'loss' add up to the total
    objective (``loss_ind`` and ``loss_cas`` are already weighted); ``ce_last`` is the net's own
    cross entropy on the last module's output, for monitoring. ``logits``: the net's logits
    (None only if no level of the last module is active)."""

    losses: dict[str, Tensor]
    logits: Tensor | None
    per_module: list[dict[str, Tensor]] = field(default_factory=list)  # [{'loss_ind': ...}]


class _Totals:
    """Sums the weighted per-level losses for logging (``loss_<level>``)."""

    def __init__(self) -> None:
        self.levels: dict[str, Tensor] = {}
        self.ce_last: Tensor | None = None
        self.logits: Tensor | None = None
        self.per_module: list[dict[str, Tensor]] = []

    def add(
        self, mod: LocalModule, level: ModuleLevel | ModuleTap, out: HeadOutput, task: bool = True
    ) -> None:
        """``task=False`` (taps): the loss is logged, its logits are not the net's."""
        loss = out.loss.detach()
        key = f"loss_{level.name}"
        weighted = level.weight * loss
        self.levels[key] = self.levels[key] + weighted if key in self.levels else weighted
        while len(self.per_module) <= mod.index:
            self.per_module.append({})
        self.per_module[mod.index][key] = loss
        if task and mod.is_last and out.logits is not None:
            self.ce_last = loss
            self.logits = out.logits.detach()

    def result(self) -> StepOutput:
        # A level no module uses (the cascade in DGL/InfoPro) is not logged as a constant 0.
        losses = dict(self.levels)
        if self.ce_last is not None:
            losses["ce_last"] = self.ce_last
        return StepOutput(losses, self.logits, self.per_module)


def e2e_step(
    net: nn.Module,
    images: Tensor,
    targets: Any,
    backward: Backward,
    loss_fn: TaskLoss = F.cross_entropy,
    taps: Sequence[BlockTap] = (),
) -> StepOutput:
    """Plain end-to-end backprop: one forward, one backward of the task's loss (plus the
    taps' losses on their blocks' outputs, e.g. mmseg's auxiliary head, as mmseg trains it)."""
    if not taps:
        logits = net(images)
        loss = loss_fn(logits, targets)
        backward(loss)
        loss = loss.detach()
        return StepOutput({"loss_e2e": loss, "ce_last": loss}, logits.detach())
    x, tapped = net.stem(images), {}
    wanted = {tap.block for tap in taps}
    for index, block in enumerate(net.blocks):
        x = block(x)
        if index in wanted:
            tapped[index] = x
    logits = net.head(x)
    loss = loss_fn(logits, targets)
    total, losses = loss, {}
    for tap in taps:
        with memory_region("aux"):
            tap_loss = tap.weight * tap.head(tapped[tap.block], targets, None).loss
        total = total + tap_loss
        losses[f"loss_{tap.name}"] = tap_loss.detach()
    backward(total)
    loss = loss.detach()
    return StepOutput({"loss_e2e": loss, **losses, "ce_last": loss}, logits.detach())


@dataclass
class _Pending:
    """A module whose graph waits for the cotangent the next module's cascade sends back."""

    output: Tensor
    cotangent: Tensor | None
    params: list[nn.Parameter]
    #: (block output, cotangent) of the module's taps, backpropagated with the output's.
    tapped: list[tuple[Tensor, Tensor]] = field(default_factory=list)


def _finish(pending: _Pending | None, backward: Backward) -> None:
    """Backward a module's graph once with its total cotangent, then drop it.

    Only the module's parameters need gradients: its input gradient (the cascade's h) was
    taken separately, so ``inputs`` lets the engine skip the first layer's input gradient.
    """
    if pending is None:
        return
    pairs = [(pending.output, pending.cotangent)] if pending.cotangent is not None else []
    pairs += pending.tapped
    if pairs:
        outputs, cotangents = zip(*pairs)
        backward_vjp_many(backward, outputs, cotangents, pending.params)


def _add(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    if a is None:
        return b
    return a if b is None else a + b


def _unscale(grad: Tensor, scale: float) -> Tensor:
    """``grad / scale``, in float32 when ``grad`` is half precision (AMP): the scale exists
    precisely because true-size gradients may underflow in float16."""
    if grad.dtype in (torch.float16, torch.bfloat16):
        grad = grad.float()
    return grad if scale == 1.0 else grad / scale


def _head_cotangent(
    head: LocalHead,
    output: Tensor,
    targets: Any,
    image: Tensor | None,
    weight: float,
    backward: Backward,
) -> tuple[Tensor | None, HeadOutput]:
    """Run a head on a detached copy of ``output``; return ``backward.scale * weight * dL/d
    output`` as the engine's backward left it in the leaf's ``.grad`` (None if no gradient)."""
    leaf = output.detach().requires_grad_()
    with memory_region("aux"):
        out = head.accumulate(leaf, targets, image, weight, backward)
    return leaf.grad, out


def run_modules(
    modules: Sequence[LocalModule],
    x: Tensor,
    targets: Any,
    image: Tensor | None,
    backward: Backward,
    totals: _Totals,
    *,
    input_is_images: bool,
    on_h_first: Callable[[Tensor], None] | None = None,
    on_output: Callable[[Tensor], None] | None = None,
) -> tuple[Tensor, _Pending, Tensor | None]:
    """The one-forward HiLo walk over consecutive ``modules`` (all of them, or one pipeline
    stage's), starting from ``x``.

    Returns the last module's output, its graph still pending (the caller finishes it, once
    any cascade gradient from the module after it is added to ``pending.cotangent``), and
    ``h_first``: the cascade gradient of the first module w.r.t. its input, at true scale,
    which belongs to the module before ``modules[0]`` (None when ``input_is_images`` or when
    the first module sends no cascade gradient). A pipeline stage passes the callbacks to
    send without waiting for the rest of the walk: ``on_h_first(h_first)`` as soon as the
    first module has computed it, ``on_output(a)`` as soon as the last module's forward ran
    (before its heads).
    """
    pending: _Pending | None = None
    h_first: Tensor | None = None
    for position, mod in enumerate(modules):
        needs_h = mod.sends_cascade
        if not needs_h:
            _finish(pending, backward)
            pending = None
        first_of_net = position == 0 and input_is_images
        leaf = x if first_of_net else x.detach().requires_grad_(needs_h)
        a, tap_features = mod.forward_tapped(leaf)
        if on_output is not None and position == len(modules) - 1:
            on_output(a)
        tapped = []
        for tap, feature in zip(mod.active_taps, tap_features):
            g_scaled, out = _head_cotangent(tap.head, feature, targets, image, tap.weight, backward)
            totals.add(mod, tap, out, task=False)
            if g_scaled is not None:
                tapped.append((feature, _unscale(g_scaled, backward.scale)))

        # Cotangents are kept at true scale (un-scaled), the ``.grad`` values are scaled.
        cotangent: Tensor | None = None
        g_cas_scaled: Tensor | None = None  # span-2 levels: what E_i sends back to E_{i-1}
        for level in mod.active_levels:
            g_scaled, out = _head_cotangent(level.head, a, targets, image, level.weight, backward)
            totals.add(mod, level, out)
            if g_scaled is not None:
                cotangent = _add(cotangent, _unscale(g_scaled, backward.scale))
                if level.span == 2:
                    g_cas_scaled = _add(g_cas_scaled, g_scaled)

        if needs_h and g_cas_scaled is not None and (pending is not None or not first_of_net):
            # h_i: the cascade gradient E_i sends to E_{i-1}; input-only VJP, no .grad filled.
            (h,) = torch.autograd.grad(a, leaf, g_cas_scaled, retain_graph=True)
            h = _unscale(h, backward.scale)
            if pending is not None:
                pending.cotangent = _add(pending.cotangent, h)
            else:
                h_first = h
                if on_h_first is not None:
                    on_h_first(h)
        _finish(pending, backward)
        pending = _Pending(a, cotangent, list(mod.parameters()), tapped)
        x = a
    if pending is None:
        raise ValueError("run_modules needs at least one module")
    return x, pending, h_first


def one_forward_step(
    modules: list[LocalModule],
    images: Tensor,
    targets: Any,
    image: Tensor | None,
    backward: Backward,
) -> StepOutput:
    """HiLo with one forward per module (METHOD.md, "One forward per module").

    For module i: a_i = E_i(leaf_i); the heads run on detached copies of a_i and give the
    cotangents g_ind_i, g_cas_i (and fill their own gradients); h_i = VJP of E_i w.r.t. leaf_i
    with g_cas_i alone is the cascade gradient sent to module i-1, whose graph is then
    backpropagated once with g_ind + g_cas + h_i and freed. At most two module graphs are alive;
    when module i sends no cascade gradient, module i-1 is finished before E_i runs, so
    independent-only training (DGL, InfoPro) keeps a single graph alive.
    """
    totals = _Totals()
    _, pending, _ = run_modules(
        modules, images, targets, image, backward, totals, input_is_images=True
    )
    _finish(pending, backward)
    return totals.result()


def reference_step(
    modules: list[LocalModule],
    images: Tensor,
    targets: Any,
    image: Tensor | None,
    backward: Backward,
) -> StepOutput:
    """HiLo as the reference code computes it: three forward paths, backward after each module.

    x path: E_i on the detached x-path output of E_{i-1} (independent loss). y path: E_{i-1}
    re-run on its own detached input, then z = E_i(y) (cascade loss, reaching E_{i-1} and E_i).
    The y path's input equals the x path's (numerically identical values), which is how the
    reference's separately carried y tensor behaves. Module i runs up to three times per step.
    """
    totals = _Totals()
    x_in = images
    prev_in: Tensor | None = None
    for mod in modules:
        loss: Tensor | float = 0.0
        x_out, tap_features = mod.forward_tapped(x_in)
        for tap, feature in zip(mod.active_taps, tap_features):
            with memory_region("aux"):
                out = tap.head(feature, targets, image)
            loss = loss + tap.weight * out.loss
            totals.add(mod, tap, out, task=False)
        for level in mod.active_levels:
            if level.span == 1:
                feature = x_out
            else:
                y = images if mod.index == 0 else modules[mod.index - 1](prev_in)
                feature = mod(y)
            with memory_region("aux"):
                out = level.head(feature, targets, image)
            loss = loss + level.weight * out.loss
            totals.add(mod, level, out)
        if isinstance(loss, Tensor) and loss.requires_grad:
            backward(loss)
        prev_in = x_in.detach()
        x_in = x_out.detach()
    return totals.result()


SCHEDULE_FUNCTIONS = {"one_forward": one_forward_step, "reference": reference_step}
