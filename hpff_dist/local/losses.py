"""Losses of the aux heads that torch does not ship."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def supervised_contrastive_loss(
    embeddings: Tensor, targets: Tensor, temperature: float = 0.07, base_temperature: float = 0.07
) -> Tensor:
    """Supervised contrastive loss (Khosla et al. 2020), one view per sample.

    InfoPro estimates the task-relevant information I(h, y) with it. For anchor ``i`` and its
    positives ``P(i)`` (other samples of the same class), with unit embeddings ``z``:
    ``l_i = -(T / T_base) * mean_{p in P(i)} [z_i.z_p / T - logsumexp_{a != i} z_i.z_a / T]``;
    the loss is the mean over all anchors, anchors without positives contributing 0.
    """
    z = F.normalize(embeddings.flatten(1), dim=1)
    n = z.shape[0]
    logits = z @ z.t() / temperature
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    log_prob = logits - torch.logsumexp(
        logits.masked_fill(self_mask, float("-inf")), dim=1, keepdim=True
    )
    positives = (targets.view(-1, 1) == targets.view(1, -1)) & ~self_mask
    pos_count = positives.sum(1).clamp(min=1)
    mean_log_prob_pos = (log_prob * positives).sum(1) / pos_count
    return -(temperature / base_temperature) * mean_log_prob_pos.mean()
