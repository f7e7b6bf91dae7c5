"""Launcher environment mapping, batch arithmetic and config checks: no processes started."""

from __future__ import annotations

import pytest
import torch
from mmengine.config import Config

from hpff_dist.engine.batch import BatchConfigError, per_device_batch, resolve_batch_config
from hpff_dist.engine.checkpoint import check_same_model
from hpff_dist.engine.deepspeed.policy import DeepSpeedConfigError, validate_deepspeed_config
from hpff_dist.engine.deepspeed.wrappers import LocalDeepSpeedOptimWrapper
from hpff_dist.engine.launchers import (
    check_launcher,
    dist_env,
    expand_nodelist,
    first_host,
    resolve_backend,
    slurm_port,
    slurm_to_torch_env,
)
from hpff_dist.engine.resolve import DEEPSPEED_STRATEGY, RESUMABLE_EPOCH_LOOP, resolve_config

SLURM = {
    "SLURM_PROCID": "5",
    "SLURM_NTASKS": "8",
    "SLURM_LOCALID": "1",
    "SLURM_JOB_ID": "123456",
    "SLURM_JOB_NODELIST": "gpu[07-08,11],cpu3",
    "SLURM_NTASKS_PER_NODE": "4(x2)",
}


@pytest.mark.parametrize(
    "nodelist, hosts",
    [
        ("node1", ["node1"]),
        ("gpu[01-04,07]", ["gpu01", "gpu02", "gpu03", "gpu04", "gpu07"]),
        ("a[9-11],b5", ["a9", "a10", "a11", "b5"]),
        ("rack[1-2]-n[01-02]", ["rack1-n01", "rack1-n02", "rack2-n01", "rack2-n02"]),
        ("x[008-010]", ["x008", "x009", "x010"]),
    ],
)
def test_expand_nodelist(nodelist, hosts):
    assert expand_nodelist(nodelist) == hosts


@pytest.mark.parametrize("bad", ["gpu[03-01]", "gpu[a-b]", "gpu[01"])
def test_expand_nodelist_rejects_garbage(bad):
    with pytest.raises(ValueError):
        expand_nodelist(bad)


def test_first_host_without_scontrol():
    assert first_host("gpu[07-08]", use_scontrol=False) == "gpu07"


def test_slurm_mapping():
    env = slurm_to_torch_env(SLURM, use_scontrol=False)
    assert env == {
        "RANK": "5",
        "WORLD_SIZE": "8",
        "LOCAL_RANK": "1",
        "MASTER_ADDR": "gpu07",
        "MASTER_PORT": str(15000 + 123456 % 10000),
        "LOCAL_WORLD_SIZE": "4",
    }
    # a user-pinned master wins
    pinned = slurm_to_torch_env({**SLURM, "MASTER_ADDR": "h", "MASTER_PORT": "2222"}, False)
    assert (pinned["MASTER_ADDR"], pinned["MASTER_PORT"]) == ("h", "2222")


def test_slurm_port_range_and_stability():
    ports = {slurm_port(j) for j in range(100000, 130000, 7)}
    assert all(15000 <= p < 25000 for p in ports)
    assert slurm_port("42") == slurm_port(42)


def test_slurm_mapping_names_missing_variables():
    with pytest.raises(RuntimeError, match="SLURM_PROCID"):
        slurm_to_torch_env({"SLURM_NTASKS": "2", "SLURM_JOB_ID": "1", "SLURM_NODELIST": "a"})


def test_dist_env_slurm():
    env = dist_env("slurm", {**SLURM}, backend="nccl")
    assert (env.rank, env.world_size, env.local_rank) == (5, 8, 1)
    assert env.backend == resolve_backend("nccl")


def test_launcher_none_under_torchrun_is_refused():
    with pytest.raises(RuntimeError, match="every rank would train on the whole dataset"):
        check_launcher("none", {"WORLD_SIZE": "2", "RANK": "0"})
    check_launcher("none", {"WORLD_SIZE": "1"})
    with pytest.raises(RuntimeError, match="torchrun"):
        check_launcher("pytorch", {})
    with pytest.raises(ValueError, match="unknown launcher"):
        check_launcher("mpi", {})


def test_backend_follows_hardware():
    expected = "nccl" if torch.cuda.is_available() else "gloo"
    assert resolve_backend("nccl") == expected
    assert resolve_backend(None) == expected
    assert resolve_backend("gloo") == "gloo"


def test_batch_arithmetic():
    assert resolve_batch_config(16, 4, 2) == {
        "train_micro_batch_size_per_gpu": 16,
        "gradient_accumulation_steps": 2,
        "train_batch_size": 128,
    }
    assert per_device_batch(1024, 8, 2) == 64
    with pytest.raises(BatchConfigError, match="1000 is not divisible by world size 3"):
        per_device_batch(1000, 3)
    with pytest.raises(
        BatchConfigError,
        match=r"global_batch_size=100 but per-device batch 16 x "
        r"world size 4 x accumulation steps 2 = 128",
    ):
        resolve_batch_config(16, 4, 2, global_batch=100)
    with pytest.raises(BatchConfigError, match="DeepSpeed train_batch_size=64"):
        resolve_batch_config(16, 4, 2, ds_config={"train_batch_size": 64})
    with pytest.raises(BatchConfigError, match="train_micro_batch_size_per_gpu=8 conflicts"):
        resolve_batch_config(16, 4, 2, ds_config={"train_micro_batch_size_per_gpu": 8})


def test_deepspeed_config_checks():
    cfg = validate_deepspeed_config({"zero_optimization": {"stage": 2}})
    assert cfg["gradient_clipping"] == 0.0  # DeepSpeed would clip at 1.0
    assert cfg["managed_gradient_accumulation"] is False
    assert validate_deepspeed_config({"gradient_clipping": 5.0})["gradient_clipping"] == 5.0
    with pytest.raises(DeepSpeedConfigError, match="ZeRO stage 3"):
        validate_deepspeed_config({"zero_optimization": {"stage": 3}})
    with pytest.raises(DeepSpeedConfigError, match="fp16"):
        validate_deepspeed_config({"fp16": {"enabled": True}})
    with pytest.raises(DeepSpeedConfigError, match="only the last one's gradients"):
        validate_deepspeed_config({"managed_gradient_accumulation": True})


class _Engine:
    def __init__(self):
        self.steps, self.backwards = 0, 0

    def backward(self, loss):
        self.backwards += 1

    def step(self):
        self.steps += 1


def test_optim_wrapper_steps_once_per_accumulation_window():
    p = torch.nn.Parameter(torch.zeros(1))
    wrapper = LocalDeepSpeedOptimWrapper(torch.optim.SGD([p], lr=0.1), accumulation_steps=3)
    wrapper.model = _Engine()
    assert wrapper.loss_backward().scale == pytest.approx(1 / 3)
    for _ in range(6):
        for _ in range(4):  # several backward calls per iteration
            wrapper.loss_backward()(torch.zeros(()))
        wrapper.step()
        wrapper.zero_grad()
    assert (wrapper.model.backwards, wrapper.model.steps) == (24, 2)
    state = wrapper.state_dict()
    fresh = LocalDeepSpeedOptimWrapper(torch.optim.SGD([p], lr=0.1), accumulation_steps=3)
    fresh.load_state_dict(state)
    assert fresh._calls == 6


def test_check_same_model_names_the_difference():
    model = torch.nn.Sequential(torch.nn.Linear(2, 3))
    check_same_model(model.state_dict(), model, "ckpt")
    other = torch.nn.Sequential(torch.nn.Linear(2, 4)).state_dict()
    with pytest.raises(ValueError, match=r"shape mismatch: 0.bias \(4,\) vs \(3,\)"):
        check_same_model(other, model, "ckpt")


def prepare_config(cfg: Config) -> Config:
    return resolve_config(cfg)[0]


def _cfg(**kw) -> Config:
    base = dict(
        model=dict(type="LocalClassifier"),
        train_dataloader=dict(batch_size=32),
        train_cfg=dict(by_epoch=True, max_epochs=2),
    )
    base.update(kw)
    return Config(base)


def test_prepare_config(monkeypatch):
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    single = prepare_config(_cfg(launcher="none"))
    assert single.get("strategy") is None
    assert single.train_cfg.type == RESUMABLE_EPOCH_LOOP and "by_epoch" not in single.train_cfg

    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(RuntimeError, match="launcher is 'none'"):
        prepare_config(_cfg(launcher="none"))
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    dist = prepare_config(_cfg(launcher="pytorch"))
    assert dist.strategy.type == DEEPSPEED_STRATEGY
    derived = prepare_config(
        _cfg(
            launcher="pytorch",
            strategy=dict(
                type="LocalDeepSpeedStrategy", global_batch_size=256, gradient_accumulation_steps=2
            ),
        )
    )
    assert derived.train_dataloader.batch_size == 32
    with pytest.raises(BatchConfigError, match="not divisible by world size 4"):
        prepare_config(
            _cfg(
                launcher="pytorch",
                strategy=dict(type="LocalDeepSpeedStrategy", global_batch_size=250),
            )
        )
    with pytest.raises(ValueError, match="LocalDeepSpeedStrategy"):
        prepare_config(_cfg(launcher="pytorch", strategy=dict(type="DeepSpeedStrategy")))
