"""Shared pieces of the distributed tests: the model under test, data, and the single-process
reference that every DeepSpeed run is compared against."""

from __future__ import annotations

import copy
from contextlib import nullcontext

import torch
from mmengine.model import BaseModel

from hpff_dist.engine.backward import LossBackward, loss_backward
from hpff_dist.registry import MODELS

NUM_CLASSES = 4
IMAGE = 8
METHODS = {
    "e2e": dict(method="e2e"),
    "dgl": dict(method="dgl", k=3),
    "dgl_hpff": dict(method="dgl_hpff", k=3, pff=dict(n=2)),
}


class ContractClassifier(BaseModel):
    """Stand-in with the classifier's train-step contract, used while ``LocalClassifier`` only
    supports e2e: the real local learner (``hpff_dist.local``) driven through
    ``loss_backward(optim_wrapper)`` with one optimizer step per batch."""

    def __init__(self, method: dict, depth: int = 8, width: int = 8) -> None:
        from hpff_dist.local import build_local_learner
        from hpff_dist.models.cifar_resnet import CifarResNet

        pre = MODELS.build(dict(type="ClassifierDataPreprocessor", mean=(0.5,) * 3, std=(0.5,) * 3))
        super().__init__(data_preprocessor=pre)
        net = CifarResNet(depth=depth, num_classes=NUM_CLASSES, widths=(width,) * 4)
        self.learner = build_local_learner(net, None, NUM_CLASSES, method, IMAGE, 3)

    def forward(self, inputs, images=None, targets=None, mode="tensor"):
        out = self.learner(inputs)
        return [dict(logits=out.detach(), targets=targets)] if mode == "predict" else out

    def train_step(self, data, optim_wrapper):
        backward = loss_backward(optim_wrapper)
        with optim_wrapper.optim_context(self):
            batch = self.data_preprocessor(data, True)
            losses = self.learner.train_step_losses(
                batch["inputs"], batch["targets"], batch["images"], backward
            )
        optim_wrapper.step()
        optim_wrapper.zero_grad()
        losses = losses if isinstance(losses, dict) else getattr(losses, "losses", {})
        return {k: torch.as_tensor(v).detach() for k, v in losses.items()}


def build_model(method: str, seed: int = 0, width: int = 8) -> BaseModel:
    """The real ``LocalClassifier`` when it supports ``method``, else the stand-in."""
    torch.manual_seed(seed)
    try:
        from hpff_dist.models.classifier import LocalClassifier

        model = LocalClassifier(
            backbone=dict(type="CifarResNet", depth=8, widths=(width,) * 4),
            method=METHODS[method],
            num_classes=NUM_CLASSES,
            image_size=IMAGE,
            data_preprocessor=dict(mean=(0.5,) * 3, std=(0.5,) * 3),
        )
    except (ValueError, TypeError, KeyError):
        torch.manual_seed(seed)
        model = ContractClassifier(METHODS[method], width=width)
    return model


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
