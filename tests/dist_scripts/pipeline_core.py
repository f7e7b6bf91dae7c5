"""The local-learning pipeline (``hpff_dist.local.pipeline``) on P x D localhost processes,
float64, against the single-process one-forward schedule on the same micro-batches.

Usage: torchrun --nproc_per_node P*D pipeline_core.py OUT.json P D
Ranks are laid out replica-major (rank = replica * P + stage). Each replica trains on its
slice of the global batch, cut into M micro-batches; the replicas of a stage average their
gradients (all_reduce over the stage's data-parallel group). Rank 0 gathers every stage's
parameters and buffers after 2 SGD steps and writes the largest relative difference to the
reference, per method, to OUT.json.
"""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist

from hpff_dist.local import PlainBackward, build_local_learner
from hpff_dist.local.pipeline import (
    StageLink,
    WeightedBackward,
    balanced_stages,
    micro_batches,
    pipeline_stage_step,
    stage_modules_of,
)
from hpff_dist.models.cifar_resnet import CifarResNet

METHODS = {
    "dgl": dict(method="dgl", k=6),
    "infopro": dict(method="infopro", k=6, ixx_2=1.0, ixy_2=0.1),
    "dgl_hpff": dict(method="dgl_hpff", k=6, pff=dict(n=2)),
    "infopro_hpff": dict(method="infopro_hpff", k=6, pff=dict(n=2)),
}
GLOBAL_BATCH, MICRO, SIZE, CLASSES, STEPS = 12, 3, 16, 5, 2


def build(spec):
    torch.manual_seed(0)
    net = CifarResNet(14, num_classes=CLASSES)  # 6 blocks: K=6 modules of one block
    return build_local_learner(net, None, CLASSES, spec, image_size=SIZE).double().train()


def data(step):
    g = torch.Generator().manual_seed(100 + step)
    images = torch.randn(GLOBAL_BATCH, 3, SIZE, SIZE, generator=g, dtype=torch.float64)
    targets = torch.randint(0, CLASSES, (GLOBAL_BATCH,), generator=g)
    restored = torch.rand(GLOBAL_BATCH, 3, SIZE, SIZE, generator=g, dtype=torch.float64)
    return images, targets, restored


def optimizer(params):
    return torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-3)


def state(learner):
    return {**dict(learner.named_parameters()), **dict(learner.named_buffers())}


def reference(spec, replicas):
    """One process: each replica's micro-batches in turn, loss weights / replicas (the mean of
    the replicas' gradients), one step per batch."""
    learner = build(spec)
    opt = optimizer(learner.parameters())
    per = GLOBAL_BATCH // replicas
    for step in range(STEPS):
        images, targets, restored = data(step)
        opt.zero_grad()
        for d in range(replicas):
            sl = slice(d * per, (d + 1) * per)
            for mb in micro_batches(images[sl], targets[sl], restored[sl], MICRO):
                backward = WeightedBackward(PlainBackward(), mb.weight / replicas)
                learner.train_step_losses(mb.inputs, mb.targets, mb.image, backward)
        opt.step()
    return {k: v.detach().clone() for k, v in state(learner).items()}


def pipelined(spec, stages, replicas, rank):
    learner = build(spec)
    stage, replica = rank % stages, rank // stages
    bounds = balanced_stages([1.0] * len(learner.local_modules), stages)
    start, end = bounds[stage]
    modules = learner.local_modules[start:end]
    nxt = learner.local_modules[end] if end < len(learner.local_modules) else None
    link = StageLink(
        stage,
        stages,
        rank - 1 if stage > 0 else None,
        rank + 1 if stage < stages - 1 else None,
        receives_cascade=nxt is not None and nxt.sends_cascade,
    )
    # Every rank must create every group, in the same order.
    dp_groups = [dist.new_group([d * stages + s for d in range(replicas)]) for s in range(stages)]
    parts = stage_modules_of(modules)
    params = list({id(p): p for part in parts for p in part.parameters()}.values())
    opt = optimizer(params)
    per = GLOBAL_BATCH // replicas
    for step in range(STEPS):
        images, targets, restored = data(step)
        sl = slice(replica * per, (replica + 1) * per)
        opt.zero_grad()
        batches = micro_batches(images[sl], targets[sl], restored[sl], MICRO)
        pipeline_stage_step(modules, link, batches, PlainBackward())
        if replicas > 1:
            for p in params:
                if p.grad is not None:
                    dist.all_reduce(p.grad, group=dp_groups[stage])
                    p.grad /= replicas
        opt.step()
    owned = {id(t) for part in parts for t in [*part.parameters(), *part.buffers()]}
    mine = {k: v.detach().clone() for k, v in state(learner).items() if id(v) in owned}
    return mine if replica == 0 else {}


def main():
    out, stages, replicas = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    assert dist.get_world_size() == stages * replicas
    results = {}
    for name, spec in METHODS.items():
        mine = pipelined(spec, stages, replicas, rank)
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, mine)
        if rank != 0:
            continue
        merged = {}
        for part in gathered:
            overlap = set(merged) & set(part)
            assert not overlap, f"two stages own {sorted(overlap)[:3]}"
            merged.update(part)
        ref = reference(spec, replicas)
        init = {k: v.detach() for k, v in state(build(spec)).items()}
        params_of = dict(build(spec).named_parameters())
        missing = [k for k in ref if k not in merged and not torch.equal(ref[k], init[k])]
        worst, moved = 0.0, 0.0
        for key, value in merged.items():
            if replicas > 1 and key not in params_of:
                # BatchNorm statistics are per replica under data parallelism (the engine
                # averages them before a checkpoint); the reference saw every micro-batch.
                continue
            if not value.is_floating_point():
                assert torch.equal(value, ref[key]), key
                continue
            diff = (value - ref[key]).norm().item()
            worst = max(worst, diff / max(ref[key].norm().item(), 1e-12))
            moved = max(moved, (ref[key] - init[key]).norm().item())
        results[name] = dict(max_rel_diff=worst, moved=moved, missing=missing, owned=len(merged))
    if rank == 0:
        with open(out, "w") as f:
            json.dump(results, f, indent=1)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
