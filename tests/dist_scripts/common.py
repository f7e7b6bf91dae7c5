"""Shared pieces of the distributed tests: the model under test, data, and the single-process
reference that every DeepSpeed run is compared against."""

from __future__ import annotations

import copy
from contextlib import nullcontext

import torch
from mmengine.model import BaseModel

from hpff_dist.models.local_step import LossBackward

NUM_CLASSES = 4
IMAGE = 8
METHODS = {
    "e2e": dict(method="e2e"),
    "dgl": dict(method="dgl", k=3),
    "dgl_hpff": dict(method="dgl_hpff", k=3, pff=dict(n=2)),
}


def build_model(method: str, seed: int = 0, width: int = 8) -> BaseModel:
    """The real ``LocalClassifier`` on a tiny CIFAR ResNet (depth 8, ``width`` channels)."""
    from hpff_dist.models.classifier import LocalClassifier

    torch.manual_seed(seed)
    return LocalClassifier(**model_kwargs(method, width))


def model_kwargs(method: str, width: int = 8) -> dict:
    return dict(
        backbone=dict(type="CifarResNet", depth=8, widths=(width,) * 4),
        method=METHODS[method],
        num_classes=NUM_CLASSES,
        image_size=IMAGE,
        data_preprocessor=dict(mean=(0.5,) * 3, std=(0.5,) * 3),
    )


def make_batches(steps: int, shards: int, per_shard: int, seed: int = 1) -> list[list[dict]]:
    """``batches[step][shard]``: the global batch of each step cut into per-device pieces."""
    g = torch.Generator().manual_seed(seed)
    return [
        [
            dict(
                images=torch.rand(per_shard, 3, IMAGE, IMAGE, generator=g),
                targets=torch.randint(0, NUM_CLASSES, (per_shard,), generator=g),
            )
            for _ in range(shards)
        ]
        for _ in range(steps)
    ]


class ShardWrapper:
    """Single-process optim wrapper that lets the model's train_step run once per shard and
    defers the optimizer step: data-parallel semantics (mean of per-shard gradients, BatchNorm
    statistics per shard) computed in one process."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer

    def loss_backward(self) -> LossBackward:
        return LossBackward(self, 1.0)

    def backward(self, loss, **kwargs):
        loss.backward()

    def optim_context(self, model):
        return nullcontext()

    def step(self, **kwargs):
        pass

    def zero_grad(self, **kwargs):
        pass


def reference_run(model: BaseModel, batches, lr: float = 0.1, momentum: float = 0.9, clip=None):
    """Parameters after ``len(batches)`` SGD steps, each on the mean gradient of its shards."""
    model = copy.deepcopy(model)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    wrapper = ShardWrapper(opt)
    for shards in batches:
        opt.zero_grad()
        for shard in shards:
            model.train_step(shard, wrapper)
        for p in model.parameters():
            if p.grad is not None:
                p.grad /= len(shards)
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
    return model


def max_param_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    assert pa.keys() == pb.keys(), sorted(set(pa) ^ set(pb))
    return max((pa[k].detach().float() - pb[k].detach().float()).abs().max().item() for k in pa)
