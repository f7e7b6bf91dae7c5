"""Top-k accuracy for classifiers (per-sample results, so mmengine can gather across ranks)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from mmengine.evaluator import BaseMetric

from hpff_dist.registry import METRICS


@METRICS.register_module()
class TopKAccuracy(BaseMetric):
    """Top-1/top-5 accuracy in percent. Each sample is one result (rank gathering truncates
    padded samples by count, so results must be per sample, not per batch)."""

    default_prefix = ""

    def __init__(self, topk: Sequence[int] = (1, 5), **kwargs) -> None:
        super().__init__(**kwargs)
        self.topk = tuple(topk)

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        for batch in data_samples:
            logits, targets = batch["logits"].float(), batch["targets"]
            k = min(max(self.topk), logits.shape[1])
            ranked = logits.topk(k, dim=1).indices.cpu()
            hits = ranked == targets.cpu().view(-1, 1)
            for row in hits:
                self.results.append(tuple(bool(row[: min(t, k)].any()) for t in self.topk))

    def compute_metrics(self, results: list) -> dict[str, float]:
        hits = torch.tensor(results, dtype=torch.float64)
        return {f"top{t}": float(hits[:, i].mean() * 100) for i, t in enumerate(self.topk)}
