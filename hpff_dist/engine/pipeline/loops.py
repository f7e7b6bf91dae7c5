"""Validation and test loops of a pipelined run: every stage holds the predictions.

Inference goes through the stages and the last one broadcasts the logits to the others
(``hpff_dist.local.pipeline.pipeline_forward``), so each of the P ranks of a replica processes
the same predictions for the same samples (the samplers split by replica). mmengine's metric
collection gathers all ``P x D`` ranks in rank order (``collect_results``: rank-interleaved,
then cut to ``size``); with replica-major ranks each sample then appears P times in a row, so
the collected list is cut at ``P x len(dataset)`` instead of ``len(dataset)``. Metrics that
are means or ratios of sums over samples (accuracy, IoU) are unchanged by counting every
sample P times; ``PerClassIoUMetric`` counts each image once by its path anyway.
"""

from __future__ import annotations

from typing import Any

from hpff_dist.engine.mmengine_runner import TestLoop, ValLoop
from hpff_dist.registry import LOOPS

__all__ = ["PipelineTestLoop", "PipelineValLoop", "ReplicatedResults"]


class ReplicatedResults:
    """An evaluator whose results are held ``stages`` times: ``evaluate(size)`` collects
    ``stages * size`` of them. Everything else is the wrapped evaluator's."""

    def __init__(self, evaluator: Any, stages: int) -> None:
        self._evaluator = evaluator
        self._stages = int(stages)

    def evaluate(self, size: int) -> dict:
        return self._evaluator.evaluate(size * self._stages)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._evaluator, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            setattr(self._evaluator, name, value)


@LOOPS.register_module()
class PipelineValLoop(ValLoop):
    """mmengine's ``ValLoop`` for a run of ``stages`` pipeline stages (see the module)."""

    def __init__(self, runner: Any, dataloader: Any, evaluator: Any, stages: int = 1,
                 **kwargs: Any) -> None:  # fmt: skip
        super().__init__(runner, dataloader, evaluator, **kwargs)
        self.evaluator = ReplicatedResults(self.evaluator, stages)


@LOOPS.register_module()
class PipelineTestLoop(TestLoop):
    """mmengine's ``TestLoop`` for a run of ``stages`` pipeline stages (see the module)."""

    def __init__(self, runner: Any, dataloader: Any, evaluator: Any, stages: int = 1,
                 **kwargs: Any) -> None:  # fmt: skip
        super().__init__(runner, dataloader, evaluator, **kwargs)
        self.evaluator = ReplicatedResults(self.evaluator, stages)
