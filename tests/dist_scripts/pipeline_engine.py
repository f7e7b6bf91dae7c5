"""Run under ``torchrun --nproc_per_node 4``: ``LocalPipelineStrategy`` with P=2 stages x D=2
replicas (DeepSpeed ZeRO 0/1/2 over each stage's replicas) against the single-process model
trained on the same micro-batches with gradient accumulation; then inference through the
stages, a checkpoint (one module-state file per stage), its merge, and an exact resume.
Writes one JSON of results (rank 0) to argv[1]."""

from __future__ import annotations

import copy
import json
import os
import sys
import tempfile

import torch
import torch.distributed as dist

from hpff_dist import compat
from hpff_dist.engine.checkpoint_convert import consolidate
from hpff_dist.engine.launchers import enable
from hpff_dist.engine.pipeline.strategy import LocalPipelineStrategy
from hpff_dist.local.pipeline import WeightedBackward
from hpff_dist.models.local_step import LossBackward

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import ShardWrapper, build_model, make_batches  # noqa: E402

STAGES, MICRO, PER_REPLICA, STEPS = 2, 2, 8, 2
# (micro-batches of 4: BatchNorm over 2 samples is so ill-conditioned that summing the same
# gradients in another order moves float32 parameters by 1e-5)
OPTIM = dict(type="OptimWrapper", optimizer=dict(type="SGD", lr=0.1, momentum=0.9))


class MicroWrapper(ShardWrapper):
    """``ShardWrapper`` whose backward weights every loss by the micro-batch's share."""

    weight = 1.0

    def loss_backward(self):
        return WeightedBackward(LossBackward(self, 1.0), self.weight)


def reference(model, batches, replicas, clip=None):
    """One process: each replica's batch cut into MICRO micro-batches, losses weighted by
    their share / replicas, one SGD step per batch (global-norm clipping when asked)."""
    model = copy.deepcopy(model).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    wrapper = MicroWrapper(opt)
    for shards in batches:
        opt.zero_grad()
        for shard in shards[:replicas]:
            n = len(shard["targets"])
            for part in torch.arange(n).tensor_split(MICRO):
                a, b = int(part[0]), int(part[-1]) + 1
                wrapper.weight = (b - a) / n / replicas
                model.train_step({k: v[a:b] for k, v in shard.items()}, wrapper)
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
    return model


def strategy(work_dir, stage, balance="even", **ds):
    return LocalPipelineStrategy(
        work_dir=work_dir,
        env_kwargs=dict(launcher="pytorch", dist_cfg=dict(backend="gloo"), randomness=dict(seed=0)),
        pipeline=dict(stages=STAGES, micro_batches=MICRO, balance=balance),
        zero_optimization=dict(stage=stage),
        **ds,
    )


def prepare(s, model):
    return s.prepare(
        copy.deepcopy(model),
        optim_wrapper=OPTIM,
        dispatch_kwargs=dict(
            train_micro_batch_size_per_gpu=PER_REPLICA, max_iters=STEPS + 1, max_epochs=1,
            epoch_length=STEPS + 1,
        ),
    )  # fmt: skip


def world_max(value: float) -> float:
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def diff_to(module, ref) -> tuple[float, int]:
    """(max |ours - ref| over this stage's parameters, how many parameters the stage holds)."""
    mine, theirs = dict(module.named_parameters()), dict(ref.named_parameters())
    missing = sorted(set(mine) - set(theirs))
    assert not missing, missing
    worst = max((mine[k].detach() - theirs[k].detach()).abs().max().item() for k in mine)
    return worst, len(mine)


def run(method, stage, tmp, replicas, clip=None, balance="even", **extra):
    rank = dist.get_rank()
    model = build_model(method)
    batches = make_batches(STEPS, replicas, PER_REPLICA)
    ref = reference(model, batches, replicas, clip)
    ds = dict(gradient_clipping=clip) if clip is not None else {}
    ds.update(extra)
    ours = strategy(tmp, stage, balance, **ds)
    wrapped, optim_wrapper, *_ = prepare(ours, model)
    wrapped.train()
    replica = rank // STAGES
    for shards in batches:
        logs = wrapped.train_step(shards[replica], optim_wrapper)
    worst, held = diff_to(wrapped.module, ref)
    counts = [None] * dist.get_world_size()
    dist.all_gather_object(counts, held)
    moved = max(
        (p.detach() - q.detach()).abs().max().item()
        for p, q in zip(ref.parameters(), model.parameters())
    )
    return (
        ours,
        wrapped,
        optim_wrapper,
        ref,
        dict(
            diff=world_max(worst),
            moved=moved,
            held_by_replica0=sum(counts[:STAGES]),
            total=len(list(model.parameters())),
            log_keys=sorted(logs),
        ),
    )


def main() -> None:
    out = sys.argv[1]
    compat.apply_all()
    enable("pytorch", init_backend="deepspeed")
    rank, world = dist.get_rank(), dist.get_world_size()
    replicas = world // STAGES
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_list = [tmp]
        dist.broadcast_object_list(tmp_list, src=0)  # one shared work dir
        tmp = tmp_list[0]
        for method in ("dgl", "dgl_hpff"):
            for stage in (0, 1, 2):
                *_, r = run(method, stage, tmp, replicas)
                results[f"{method}/zero{stage}"] = r
        *_, r = run("dgl_hpff", 1, tmp, replicas, clip=0.05)
        results["dgl_hpff/zero1/clip"] = r
        *_, r = run("dgl_hpff", 2, tmp, replicas, balance="measured")
        results["dgl_hpff/zero2/measured"] = r
        # bf16 activations cross the boundary; the cascade gradient h travels in float32
        *_, r = run("dgl_hpff", 1, tmp, replicas, bf16=dict(enabled=True))
        results["dgl_hpff/zero1/bf16"] = r

        # A checkpoint: one module-state file per stage; merged, it is the whole model.
        trained, wrapped, optim_wrapper, ref, _ = run("dgl_hpff", 1, tmp, replicas)
        ckpt = os.path.join(tmp, "iter_2.pth")
        trained.save_checkpoint(ckpt)  # averages BN buffers over the replicas
        merged = consolidate(ckpt)["state_dict"]
        ref_params = dict(ref.named_parameters())
        results["merged"] = dict(
            files=sorted(f for f in os.listdir(ckpt) if f.endswith("model_states.pt")),
            diff=world_max(
                max((merged[k] - v.detach()).abs().max().item() for k, v in ref_params.items())
            ),
            keys_equal=set(merged) == set(ref.state_dict()),
        )
        # Inference through the stages: every rank returns the whole model's logits, those of
        # the merged model (the same weights and BatchNorm statistics) in one process.
        whole = build_model("dgl_hpff")
        whole.load_state_dict(merged)
        batch = make_batches(1, 1, 6, seed=7)[0][0]
        wrapped.eval()
        whole.eval()
        ours = wrapped.val_step(batch)[0]["logits"]
        theirs = whole.val_step(batch)[0]["logits"]
        results["val_step"] = dict(diff=world_max((ours - theirs).abs().max().item()))
        wrapped.train()
        dist.barrier()
        # Resume into a fresh strategy and train one more step beside the original: equal.
        resumed = strategy(tmp, 1)
        fresh, fresh_optim, *_ = prepare(resumed, build_model("dgl_hpff", seed=5))
        resumed.resume(ckpt)
        extra = make_batches(1, replicas, PER_REPLICA, seed=11)[0]
        fresh.train()
        fresh.train_step(extra[rank // STAGES], fresh_optim)
        wrapped.train_step(extra[rank // STAGES], optim_wrapper)
        a, b = dict(fresh.module.named_parameters()), dict(wrapped.module.named_parameters())
        diff = max((a[k] - b[k]).abs().max().item() for k in b)
        results["resume"] = dict(diff=world_max(diff))
    if rank == 0:
        with open(out, "w") as f:
            json.dump(results, f, indent=1)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
