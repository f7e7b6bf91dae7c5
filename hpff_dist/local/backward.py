"""The backward contract between schedules and the training engine.

Schedules never call ``.backward()`` themselves for anything that fills parameter gradients:
the engine owns that call (mmengine's optim wrapper, an AMP scaler, DeepSpeed), because it may
scale the loss, accumulate gradients or synchronise ranks. A schedule receives a ``Backward``
and must know its ``scale`` so that cotangents read back from ``.grad`` of detached leaves can
be un-scaled before they are fed into the next surrogate loss.

Local learning mostly backpropagates a module output with a known cotangent. An engine that can
take that directly (``Tensor.backward(gradient=..., inputs=...)``) offers ``vjp``; use
:func:`backward_vjp`, which falls back to the scalar surrogate ``(output * cotangent).sum()``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class Backward(Protocol):
    """``backward(loss)`` accumulates ``scale * d loss / d theta`` into every ``theta.grad``.

    Optionally ``vjp(output, cotangent, inputs)``: accumulate ``scale * J^T cotangent`` with
    ``J = d output / d theta``, only into ``inputs`` when given (see :func:`backward_vjp`).
    """

    scale: float

    def __call__(self, loss: Tensor) -> None: ...


def backward_vjp(
    backward: Backward,
    output: Tensor,
    cotangent: Tensor,
    inputs: Sequence[Tensor] | None = None,
) -> None:
    """Backpropagate ``cotangent`` from ``output`` through the engine's backward.

    ``inputs`` is a hint: the leaves whose gradients the caller needs. An engine with ``vjp``
    then skips all other gradient work (e.g. the input gradient of a module's first layer,
    which local learning throws away); without it the surrogate loss fills every leaf, which
    gives the same parameter gradients at a higher cost. So ``inputs`` must not be relied upon
    to keep other leaves' ``.grad`` untouched.
    """
    if inputs is not None:
        inputs = [t for t in inputs if t.requires_grad]
        if not inputs:
            return  # nothing the caller needs depends on this backward
    vjp = getattr(backward, "vjp", None)
    if vjp is not None:
        vjp(output, cotangent, inputs)
    else:
        backward((output * cotangent).sum())


def backward_vjp_many(
    backward: Backward,
    outputs: Sequence[Tensor],
    cotangents: Sequence[Tensor],
    inputs: Sequence[Tensor] | None = None,
) -> None:
    """:func:`backward_vjp` of several outputs of one graph (a module's output and the block
    outputs its taps read), in one backward pass: the engine's ``vjp`` takes one tensor, so
    more than one go through the surrogate ``sum_j (output_j * cotangent_j).sum()``."""
    if len(outputs) != len(cotangents) or not outputs:
        raise ValueError(
            f"need as many cotangents as outputs, got {len(cotangents)}, {len(outputs)}"
        )
    if len(outputs) == 1:
        backward_vjp(backward, outputs[0], cotangents[0], inputs)
        return
    if inputs is not None and not any(t.requires_grad for t in inputs):
        return
    backward(sum((o * c).sum() for o, c in zip(outputs, cotangents)))


def tensor_backward_kwargs(cotangent: Tensor, inputs: Sequence[Tensor] | None) -> dict:
    """Keyword arguments of ``Tensor.backward`` for a ``vjp``."""
    kwargs: dict = {"gradient": cotangent}
    if inputs is not None:
        kwargs["inputs"] = list(inputs)
    return kwargs


class PlainBackward:
    """``loss.backward()``: the default when no engine is involved."""

    scale: float = 1.0

    def __call__(self, loss: Tensor) -> None:
        loss.backward()

    def vjp(self, output: Tensor, cotangent: Tensor, inputs: Sequence[Tensor] | None) -> None:
        output.backward(**tensor_backward_kwargs(cotangent, inputs))


class ScaledBackward:
    """``(loss * scale).backward()``: what an AMP loss scaler does; used to test the contract.
    It has no ``vjp``, so it also exercises the surrogate-loss fallback."""

    def __init__(self, scale: float) -> None:
        self.scale = float(scale)

    def __call__(self, loss: Tensor) -> None:
        (loss * self.scale).backward()
