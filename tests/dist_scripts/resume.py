"""Run under ``torchrun --nproc_per_node 2``: full FlexibleRunner runs through
``build_runner`` with ZeRO-2. Uninterrupted vs interrupted-at-iteration-4-and-resumed (mid
epoch), sharding of each epoch over ranks, BatchNorm buffers across ranks, loading a checkpoint
into another model. Writes a JSON of results (rank 0) to argv[1]."""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist
from mmengine.config import Config
from mmengine.hooks import Hook
from torch.utils.data import Dataset

from hpff_dist.engine.changes import read_changes
from hpff_dist.engine.runner_factory import build_runner
from hpff_dist.registry import DATASETS, HOOKS

sys.path.insert(0, os.path.dirname(__file__))
from common import IMAGE, NUM_CLASSES, model_kwargs  # noqa: E402

SAMPLES, PER_DEVICE, EPOCHS, STOP_AT = 24, 4, 2, 4  # 3 iterations per epoch, 6 in all


@DATASETS.register_module(force=True)
class RandomImages(Dataset):
    """Fixed random images in [0, 1] with labels; items carry their index."""

    def __init__(self, n: int = SAMPLES) -> None:
        g = torch.Generator().manual_seed(3)
        self.images = torch.rand(n, 3, IMAGE, IMAGE, generator=g)
        self.targets = torch.randint(0, NUM_CLASSES, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return dict(images=self.images[i], targets=self.targets[i], index=i)


@HOOKS.register_module(force=True)
class RecordAndInterrupt(Hook):
    """Records which samples this rank trained on; raises after iteration ``stop_at``'s
    checkpoint is written (priority LOWEST runs after CheckpointHook)."""

    priority = "LOWEST"
    seen: list[tuple[int, list[int]]] = []

    def __init__(self, stop_at: int | None = None) -> None:
        self.stop_at = stop_at

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        RecordAndInterrupt.seen.append((runner.epoch, data_batch["index"].tolist()))

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if runner.iter == 0:  # no checkpoint yet: ranks' running statistics have drifted apart
            RecordAndInterrupt.unsynced_spread = bn_rank_spread(
                {k: v.float() for k, v in runner.model.module.state_dict().items()}
            )
        if self.stop_at is not None and runner.iter + 1 == self.stop_at:
            raise KeyboardInterrupt(f"simulated interruption after iteration {self.stop_at}")


def model_config(method: str, width: int) -> dict:
    return dict(type="hpff_dist.LocalClassifier", **model_kwargs(method, width))


def config(work_dir: str, name: str, method: str = "dgl_hpff", width: int = 8, **extra) -> Config:
    return Config(
        dict(
            model=model_config(method, width),
            work_dir=work_dir,
            experiment_name=name,
            launcher="pytorch",
            default_scope="hpff_dist",
            train_dataloader=dict(
                batch_size=PER_DEVICE,
                num_workers=0,
                sampler=dict(type="DefaultSampler", shuffle=True, seed=0),
                collate_fn=dict(type="default_collate"),
                dataset=dict(type="RandomImages"),
            ),
            train_cfg=dict(by_epoch=True, max_epochs=EPOCHS),
            optim_wrapper=dict(
                type="OptimWrapper", optimizer=dict(type="SGD", lr=0.05, momentum=0.9)
            ),
            param_scheduler=[
                dict(type="LinearLR", start_factor=0.5, by_epoch=False, begin=0, end=4)
            ],
            strategy=dict(
                type="LocalDeepSpeedStrategy",
                zero_optimization=dict(stage=2),
                global_batch_size=PER_DEVICE * 2,
            ),
            default_hooks=dict(
                checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=2, save_last=True),
                logger=dict(type="LoggerHook", interval=1),
                sampler_seed=dict(type="DistSamplerSeedHook"),
                param_scheduler=dict(type="ParamSchedulerHook"),
            ),
            custom_hooks=[dict(type="RecordAndInterrupt", **extra)],
            env_cfg=dict(dist_cfg=dict(backend="nccl")),  # becomes gloo on CPU
            randomness=dict(seed=0),
            log_level="WARNING",
        )
    )


def module_state(runner) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().float() for k, v in runner.model.module.state_dict().items()}


def bn_rank_spread(state: dict) -> float:
    """Largest difference of any BatchNorm running statistic between ranks."""
    flat = torch.cat([v.reshape(-1) for k, v in state.items() if "running" in k]).double()
    lo, hi = flat.clone(), flat.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    return float((hi - lo).abs().max())


def world_max(value: float) -> float:
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def max_diff(a: dict, b: dict, params_only_keys=None) -> float:
    keys = params_only_keys or a.keys()
    return max((a[k] - b[k]).abs().max().item() for k in keys)


def main() -> None:
    out, root = sys.argv[1], sys.argv[2]  # root: a directory every rank sees
    results: dict = {}
    work_a, work_b = os.path.join(root, "a"), os.path.join(root, "b")

    runner = build_runner(config(work_a, "uninterrupted"))
    runner.train()
    full = module_state(runner)
    if dist.get_rank() == 0:  # the resolution's changes, then the strategy's
        results["config_changes"] = read_changes(work_a)
    results["model_class"] = type(runner.model.module).__name__
    params = [k for k, _ in runner.model.module.named_parameters()]
    seen_a = list(RecordAndInterrupt.seen)

    # each rank sees a different shard of every epoch, and together the whole epoch
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, seen_a)
    per_epoch = {}
    for rank_seen in gathered:
        for epoch, idx in rank_seen:
            per_epoch.setdefault(epoch, []).extend(idx)
    results["epoch_shards"] = {
        str(e): dict(count=len(v), unique=len(set(v))) for e, v in per_epoch.items()
    }
    results["epoch_orders_differ"] = per_epoch.get(0) != per_epoch.get(1)

    # BatchNorm buffers in the final (averaged-on-save) state are the same on every rank
    results["bn_buffers_rank_spread"] = bn_rank_spread(full)
    results["bn_buffers_rank_spread_before_first_save"] = RecordAndInterrupt.unsynced_spread
    results["bn_buffer_count"] = sum("running" in k for k in full)

    # interrupted after iteration 4 (second epoch, second batch) and resumed
    RecordAndInterrupt.seen = []
    runner = build_runner(config(work_b, "interrupted", stop_at=STOP_AT))
    try:
        runner.train()
        results["interrupted"] = False
    except KeyboardInterrupt:
        results["interrupted"] = True
    with open(os.path.join(work_b, "last_checkpoint")) as f:
        results["last_checkpoint"] = os.path.basename(f.read().strip())
    runner = build_runner(_with(config(work_b, "resumed"), resume=True))
    runner.train()
    resumed = module_state(runner)
    results["resumed_iters"] = runner.iter
    results["resume_param_diff"] = world_max(max_diff(full, resumed, params))
    results["resume_buffer_diff"] = world_max(max_diff(full, resumed))
    results["resume_lr"] = runner.optim_wrapper.get_lr()["lr"][0]

    # control: mmengine's own EpochBasedTrainLoop replays the interrupted epoch from its start
    work_d = os.path.join(root, "d")
    plain = dict(type="EpochBasedTrainLoop", max_epochs=EPOCHS)
    runner = build_runner(
        _with(config(work_d, "plain_interrupted", stop_at=STOP_AT), train_cfg=plain)
    )
    try:
        runner.train()
    except KeyboardInterrupt:
        pass
    runner = build_runner(_with(config(work_d, "plain_resumed"), train_cfg=plain, resume=True))
    runner.train()
    results["plain_loop_resumed_iters"] = runner.iter
    results["plain_loop_resume_param_diff"] = world_max(
        max_diff(full, module_state(runner), params)
    )

    # a checkpoint from another model (different width) is refused with names
    ckpt = os.path.join(work_b, "iter_4.pth")
    runner = build_runner(_with(config(os.path.join(root, "c"), "other", width=4), load_from=ckpt))
    try:
        runner.train()
        results["other_model_error"] = None
    except ValueError as err:
        results["other_model_error"] = str(err)

    if dist.get_rank() == 0:
        with open(out, "w") as f:
            json.dump(results, f, indent=1)
    dist.barrier()
    dist.destroy_process_group()


def _with(cfg: Config, **kwargs) -> Config:
    for key, value in kwargs.items():
        cfg[key] = value  # replace, not merge (train_cfg must lose by_epoch)
    return cfg


if __name__ == "__main__":
    main()
