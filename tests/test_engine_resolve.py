"""Config resolution: a deep copy, every change on record, written to the work dir and logged;
and what a single-process build does not import."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO
from mmengine.config import Config

from hpff_dist.engine.changes import CHANGES_FILE, UNSET, ChangeRecorder, read_changes
from hpff_dist.engine.deepspeed.policy import (
    DEEPSPEED_OPTIM_WRAPPER,
    DeepSpeedConfigError,
    translate_optim_wrapper,
    validate_deepspeed_config,
)
from hpff_dist.engine.resolve import (
    DEEPSPEED_STRATEGY,
    RESOLVED_CONFIG_FILE,
    RESUMABLE_EPOCH_LOOP,
    RESUMABLE_ITER_LOOP,
    resolve_config,
)
from hpff_dist.engine.signatures import ConfigArgumentError

MODEL = dict(
    type="hpff_dist.LocalClassifier",
    backbone=dict(type="CifarResNet", depth=8, widths=(4, 4, 4, 4)),
    method=dict(method="e2e"),
    num_classes=4,
    image_size=8,
    data_preprocessor=dict(std=(0.25, 0.25, 0.25)),
)


def _cfg(**kw) -> Config:
    base = dict(
        model=MODEL,
        data_preprocessor=dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
        train_dataloader=dict(batch_size=32, dataset=dict(type="Nothing")),
        train_cfg=dict(by_epoch=True, max_epochs=2),
        optim_wrapper=dict(type="OptimWrapper", optimizer=dict(type="SGD", lr=0.1)),
    )
    base.update(kw)
    return Config(base)


@pytest.fixture(autouse=True)
def _one_process(monkeypatch):
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)


def _by_key(changes) -> dict:
    return {c.key: c for c in changes}


def test_resolution_leaves_the_callers_config_alone():
    # Config.copy() is shallow: the per-device batch written into the copy's loader dict would
    # also be the caller's (and so would the loop swap and the normalisation merge).
    cfg = _cfg(strategy=dict(type="LocalDeepSpeedStrategy", global_batch_size=64))
    before = cfg.to_dict()
    run, changes = resolve_config(cfg)
    assert run.train_dataloader.batch_size == 64 and changes
    assert cfg.to_dict() == before
    run.model.backbone.depth = 20
    run.optim_wrapper.optimizer.lr = 1.0
    assert cfg.model.backbone.depth == 8 and cfg.optim_wrapper.optimizer.lr == 0.1


def test_every_change_is_recorded_with_old_and_new_values():
    cfg = _cfg(strategy=dict(type="LocalDeepSpeedStrategy", global_batch_size=64))
    run, changes = resolve_config(cfg)
    changed = _by_key(changes)
    assert (changed["launcher"].old, changed["launcher"].new) == (UNSET, "none")
    pre = changed["model.data_preprocessor"]
    assert pre.old == dict(std=(0.25, 0.25, 0.25))
    assert pre.new == dict(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))  # the model's keys win
    assert (changed["train_cfg.by_epoch"].old, changed["train_cfg.by_epoch"].new) == (True, UNSET)
    assert (changed["train_cfg.type"].old, changed["train_cfg.type"].new) == (
        UNSET,
        RESUMABLE_EPOCH_LOOP,
    )
    assert changed["strategy.type"].new == DEEPSPEED_STRATEGY
    assert (changed["train_dataloader.batch_size"].old, run.train_dataloader.batch_size) == (32, 64)
    assert "global_batch_size 64" in changed["train_dataloader.batch_size"].why
    assert changed["optim_wrapper.type"].old == "OptimWrapper"
    assert changed["optim_wrapper.type"].new == DEEPSPEED_OPTIM_WRAPPER
    assert all(c.why and c.by == "resolve_config" for c in changes)
    # what the records say is what the run config holds
    assert run.model.data_preprocessor == pre.new and run.train_cfg.type == RESUMABLE_EPOCH_LOOP
    assert "by_epoch" not in run.train_cfg


def test_resolving_a_resolved_config_changes_nothing():
    run, _ = resolve_config(_cfg(strategy=dict(type="LocalDeepSpeedStrategy", global_batch_size=8)))
    again, changes = resolve_config(run)
    assert changes == [] and again.to_dict() == run.to_dict()


def test_single_process_without_strategy_gets_no_deepspeed_keys():
    run, changes = resolve_config(_cfg())
    assert run.get("strategy") is None and run.optim_wrapper.type == "OptimWrapper"
    assert "optim_wrapper.type" not in _by_key(changes)


def test_optim_wrapper_that_cannot_drive_deepspeed_is_refused_at_resolution():
    cfg = _cfg(
        strategy=dict(type="LocalDeepSpeedStrategy"),
        optim_wrapper=dict(type="AmpOptimWrapper", optimizer=dict(type="SGD", lr=0.1)),
    )
    with pytest.raises(DeepSpeedConfigError, match="bf16"):
        resolve_config(cfg)


def test_strategy_policy_records_what_it_fills_and_moves():
    recorder = ChangeRecorder(by="LocalDeepSpeedStrategy")
    ds = validate_deepspeed_config({"zero_optimization": {"stage": 1}}, recorder)
    wrapper = translate_optim_wrapper(
        dict(type="OptimWrapper", optimizer=dict(type="SGD"), clip_grad=dict(max_norm=2.0)),
        ds,
        explicit_clip=False,
        recorder=recorder,
    )
    assert ds["gradient_clipping"] == 2.0 and "clip_grad" not in wrapper
    assert wrapper["accumulation_steps"] == 1
    changes = [(c.key, c.old, c.new) for c in recorder.changes]
    assert ("deepspeed_config.managed_gradient_accumulation", UNSET, False) in changes
    assert ("deepspeed_config.gradient_clipping", UNSET, 0.0) in changes  # DeepSpeed: 1.0
    assert ("optim_wrapper.clip_grad", dict(max_norm=2.0), UNSET) in changes
    assert ("deepspeed_config.gradient_clipping", 0.0, 2.0) in changes
    assert ("optim_wrapper.type", "OptimWrapper", DEEPSPEED_OPTIM_WRAPPER) in changes


def test_build_runner_writes_and_logs_the_resolved_config(tmp_path):
    from hpff_dist.engine.runner_factory import build_runner

    # The Runner builds its loaders when it trains: this dataset type is never looked up.
    cfg = _cfg(work_dir=str(tmp_path), default_scope="hpff_dist", log_level="INFO")
    before = cfg.to_dict()
    runner = build_runner(cfg)
    assert cfg.to_dict() == before
    resolved = Config.fromfile(str(tmp_path / RESOLVED_CONFIG_FILE))
    assert resolved.train_cfg.type == RESUMABLE_EPOCH_LOOP
    assert tuple(resolved.model.data_preprocessor.mean) == (0.5, 0.5, 0.5)
    records = {r["key"]: r for r in read_changes(str(tmp_path))}
    assert records["train_cfg.type"]["old"] == "<unset>"
    assert records["train_cfg.type"]["new"] == RESUMABLE_EPOCH_LOOP
    by_epoch = records["train_cfg.by_epoch"]
    assert (by_epoch["old"], by_epoch["new"], by_epoch["by"]) == (True, "<unset>", "resolve_config")
    assert by_epoch["why"] == records["train_cfg.type"]["why"]
    assert records["model.data_preprocessor"]["old"] == dict(std=[0.25, 0.25, 0.25])
    assert records["model.data_preprocessor"]["new"] == dict(
        mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25]
    )
    assert json.loads((tmp_path / CHANGES_FILE).read_text()) == list(records.values())
    log = next(tmp_path.glob("*/*.log")).read_text()
    assert "config change by resolve_config: train_cfg.type: <unset> -> " in log
    assert "config change by resolve_config: model.data_preprocessor: " in log
    assert type(runner).__name__ == "LocalRunner"  # mmengine's Runner + our checkpoint policy


# A single-process run, built and trained for two iterations, never imports DeepSpeed.
_TRAIN_ONE_PROCESS = """
import sys
import torch
from mmengine.config import Config
from torch.utils.data import Dataset

from hpff_dist.engine.runner_factory import build_runner
from hpff_dist.registry import DATASETS


@DATASETS.register_module()
class TinyImages(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return torch.rand(3, 8, 8), i % 4


cfg = Config(dict(
    model={model!r},
    work_dir={work_dir!r},
    default_scope="hpff_dist",
    train_dataloader=dict(batch_size=2, num_workers=0, dataset=dict(type="TinyImages"),
                          sampler=dict(type="DefaultSampler", shuffle=False),
                          collate_fn=dict(type="default_collate")),
    train_cfg=dict(by_epoch=True, max_epochs=1),
    optim_wrapper=dict(type="OptimWrapper", optimizer=dict(type="SGD", lr=0.1)),
    log_level="WARNING",
))
runner = build_runner(cfg)
runner.train()
print(">", type(runner).__name__, runner.iter, "deepspeed" in sys.modules,
      sorted(m for m in sys.modules if m.startswith("deepspeed"))[:5])
"""


def test_single_process_run_does_not_import_deepspeed(tmp_path):
    model = dict(MODEL, data_preprocessor=dict(mean=(0.5,) * 3, std=(0.5,) * 3))
    code = _TRAIN_ONE_PROCESS.format(model=model, work_dir=str(tmp_path))
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line[2:] for line in out.stdout.splitlines() if line.startswith("> ")]
    assert lines == ["LocalRunner 2 False []"], out.stdout[-2000:]


# ---------------------------------------------------------------------- the iteration loop
@pytest.mark.parametrize(
    "train_cfg",
    [dict(type="IterBasedTrainLoop", max_iters=40, val_interval=20),
     dict(type="mmengine.IterBasedTrainLoop", max_iters=40, val_interval=20)],
)  # fmt: skip
def test_mmengines_iteration_loop_becomes_the_resumable_one_on_record(train_cfg):
    run, changes = resolve_config(_cfg(train_cfg=train_cfg))
    assert run.train_cfg == dict(type=RESUMABLE_ITER_LOOP, max_iters=40, val_interval=20)
    change = _by_key(changes)["train_cfg.type"]
    assert (change.old, change.new) == (train_cfg["type"], RESUMABLE_ITER_LOOP)
    assert "loading and dropping every trained batch" in change.why
    again, more = resolve_config(run)
    assert more == [] and again.train_cfg == run.train_cfg


def test_by_epoch_false_without_a_type_becomes_the_resumable_iteration_loop():
    run, changes = resolve_config(_cfg(train_cfg=dict(by_epoch=False, max_iters=40)))
    assert run.train_cfg == dict(type=RESUMABLE_ITER_LOOP, max_iters=40)
    changed = _by_key(changes)
    assert (changed["train_cfg.by_epoch"].old, changed["train_cfg.by_epoch"].new) == (False, UNSET)
    assert changed["train_cfg.type"].new == RESUMABLE_ITER_LOOP


def test_the_iteration_loop_class_itself_is_replaced_a_subclass_is_not():
    from mmengine.runner import IterBasedTrainLoop

    run, _ = resolve_config(_cfg(train_cfg=dict(type=IterBasedTrainLoop, max_iters=4)))
    assert run.train_cfg.type == RESUMABLE_ITER_LOOP

    class MyLoop(IterBasedTrainLoop):
        pass

    for train_cfg in (
        dict(type=MyLoop, max_iters=4),
        dict(type=RESUMABLE_EPOCH_LOOP, max_epochs=2),
    ):
        run, changes = resolve_config(_cfg(train_cfg=train_cfg))
        assert run.train_cfg.type == train_cfg["type"] and "train_cfg.type" not in _by_key(changes)


def test_a_misspelt_iteration_loop_argument_fails_at_resolution():
    cfg = _cfg(train_cfg=dict(type="IterBasedTrainLoop", max_iter=40))
    with pytest.raises(ConfigArgumentError, match="max_iter"):
        resolve_config(cfg)
