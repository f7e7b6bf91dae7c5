"""Every key means something: config mistakes stop ``tools/train.py`` before any training,
naming the config key (or file and line) and the fix. The subprocess cases run the real tool
on the shipped ``make train`` config; each fails in seconds, before a batch is read."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from config_signature import resolve_as_launched
from conftest import REPO
from mmengine.config import Config

from hpff_dist.engine.config import check_helper_overrides, check_syntax, derived_paths, load_config
from hpff_dist.engine.resolve import resolve_config
from hpff_dist.engine.signatures import ConfigArgumentError, accepted_arguments, check_arguments

CONFIG = REPO / "configs/fashion_mnist/resnet32_k16_dgl_hpff.py"
FAST_S = 60  # a failure before training takes seconds; one epoch on this CPU takes minutes


def _train_fails(work: Path, *args: str, config: Path = CONFIG) -> str:
    """Run tools/train.py, assert it failed before training, return its output."""
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "tools/train.py", str(config), "--work-dir", str(work), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    elapsed = time.perf_counter() - start
    text = out.stdout + out.stderr
    assert out.returncode != 0, text[-3000:]
    assert "Epoch(train)" not in text, text[-3000:]
    assert not list(work.rglob("*.pth")), "a checkpoint was written"
    assert elapsed < FAST_S, f"took {elapsed:.0f} s: it trained before failing?"
    return text


def test_helper_variable_overrides_are_refused_naming_the_keys_to_set(tmp_path):
    text = _train_fails(
        tmp_path / "w",
        "--cfg-options",
        "max_epochs=1",
        "batch_size=16",
        "data_root=/elsewhere",
    )
    # max_epochs=4 in this config: the keys holding 4 were computed from it
    assert "--cfg-options max_epochs: set " in text
    for key in ("train_cfg.max_epochs", "param_scheduler.1.end", "param_scheduler.1.T_max"):
        assert key in text
    assert "--cfg-options batch_size: set train_dataloader.batch_size instead" in text
    assert "val_dataloader.batch_size" not in text  # 500: not computed from batch_size=128
    assert "--cfg-options data_root: use --data-root DIR" in text
    assert "changes nothing" in text


def _refusal(config: str, **options) -> list[str]:
    """The lines of load_config's refusal of ``options`` on ``config``."""
    with pytest.raises(ValueError, match="changes nothing") as err:
        load_config(str(REPO / config), options)
    return str(err.value).splitlines()[1:]


def test_helper_overrides_name_the_keys_computed_from_them_not_equal_values():
    # fmnist_short: max_epochs = 2, and so is every Pad/RandomCrop padding: not computed from it
    (line,) = _refusal("configs/fashion_mnist/resnet32_e2e.py", max_epochs=1)
    assert line.strip() == (
        "--cfg-options max_epochs: set param_scheduler.1.end, param_scheduler.1.T_max, "
        "train_cfg.max_epochs, train_cfg.val_interval instead"
    )
    assert "padding" not in line
    # cifar10: batch_size = 1024, and so are auto_scale_lr.base_batch_size and
    # cpu_malloc.trim_threshold_mb, both written as numbers
    (line,) = _refusal("configs/cifar10/resnet32_e2e.py", batch_size=16)
    assert line.strip() == "--cfg-options batch_size: set train_dataloader.batch_size instead"


def test_derived_paths_follow_the_source_through_aliases_and_base_files(tmp_path):
    (tmp_path / "base.py").write_text(
        "n = 3\n"
        "_twice = n * 2\n"
        "_pipe = [dict(type='Pad', padding=3), dict(type='Crop', size=_twice)]\n"
        "train_cfg = dict(max_epochs=n, val_interval=n, by_epoch=True)\n"
        "param_scheduler = [dict(end=10), dict(end=n, T_max=_twice, begin=3)]\n"
        "val_dataloader = dict(batch_size=3, dataset=dict(pipeline=_pipe))\n"
        "test_dataloader = val_dataloader\n"
        "model = dict(head=dict(steps=n, **dict(width=_twice)), size=(n, 3))\n"
        "default_hooks = dict(checkpoint=dict(interval=n, max_keep_ckpts=n))\n"
        "custom_hooks = [dict(type='H', every=n)]\n"
        "env_cfg = dict(a=n, b=n)\n"
        "env_cfg.pop('b')\n"  # not followed: the loaded config says it is gone
        "_unused = 1\n"
    )
    top = tmp_path / "top.py"
    top.write_text(
        "_base_ = ['./base.py']\n"
        "train_cfg = dict(val_interval=1)\n"  # merged: max_epochs still computed from n
        "default_hooks = dict(checkpoint=dict(_delete_=True, interval=5))\n"
        "custom_hooks = [dict(type='H', every=4)]\n"  # a list replaces the base's
        "_steps = 7\n"
        "model = dict(head=dict(depth=_steps))\n"
    )
    cfg = Config.fromfile(str(top)).to_dict()
    assert derived_paths(str(top), "n", cfg) == [
        "train_cfg.max_epochs",
        "param_scheduler.1.end",
        "param_scheduler.1.T_max",
        "val_dataloader.dataset.pipeline.1.size",
        "test_dataloader.dataset.pipeline.1.size",
        "model.head.steps",
        "model.head.width",
        "model.size.0",
        "env_cfg.a",
    ]
    assert derived_paths(str(top), "n")[-1] == "env_cfg.b"  # no config: no check
    assert derived_paths(str(top), "_pipe", cfg) == [
        "val_dataloader.dataset.pipeline",
        "test_dataloader.dataset.pipeline",
    ]
    with pytest.raises(ValueError) as err:
        check_helper_overrides(cfg, ["_steps", "_unused", "_pipe.0.padding"], str(top))
    lines = str(err.value).splitlines()[1:]
    assert [line.strip() for line in lines] == [
        "--cfg-options _steps: set model.head.depth instead",
        "--cfg-options _unused: nothing reads it: drop it",
        "--cfg-options _pipe.0.padding: set val_dataloader.dataset.pipeline.0.padding, "
        "test_dataloader.dataset.pipeline.0.padding instead",
    ]


def test_misspelt_hook_and_optimizer_arguments_fail_before_training(tmp_path):
    text = _train_fails(
        tmp_path / "w",
        "--cfg-options",
        "default_hooks.checkpoint.intervall=1",
        "optim_wrapper.optimizer.lrr=0.1",
    )
    assert (
        "default_hooks.checkpoint.intervall: CheckpointHook takes no argument 'intervall' "
        "(did you mean 'interval'?)"
    ) in text
    assert "Runner.save_checkpoint" in text  # where its unknown arguments would have gone
    assert "optim_wrapper.optimizer.lrr: SGD takes no argument 'lrr' (did you mean 'lr'?)" in text
    assert "unexpected keyword argument" not in text  # the late mmengine error


def test_pff_n_larger_than_the_feature_map_fails_at_build_naming_the_key(tmp_path):
    text = _train_fails(tmp_path / "w", "--cfg-options", "model.method.pff.n=9")
    # ResNet-32's last stage is 8x8 at model.image_size=32 (declared reduction 4)
    assert "model.method.pff.n=9: local module" in text
    assert "output is 8x8 at image size 32x32 (model.image_size)" in text
    assert "use n <= 8" in text


def test_impossible_k_names_the_key_and_the_true_range(tmp_path):
    text = _train_fails(tmp_path / "w", "--cfg-options", "model.method.k=40")
    assert "model.method.k=40 is impossible for a network with 15 blocks" in text
    # 15 blocks: balanced splits up to 15 modules; the published table adds K=16
    assert "1 <= K <= 15" in text and "also gives K=[16]" in text


def test_syntax_error_in_a_base_file_names_its_file_and_line(tmp_path):
    bad = tmp_path / "bad_base.py"
    bad.write_text("batch_size = 64\nmodel = dict(\n    k=2\n")
    top = tmp_path / "top.py"
    top.write_text(f"_base_ = [{str(CONFIG)!r}, './bad_base.py']\n")
    text = _train_fails(tmp_path / "w", config=top)
    assert f"config file {bad}, line 2: '(' was never closed" in text
    assert f'File "{bad}", line 2' in text
    assert '"<unknown>"' not in text


def test_syntax_error_in_the_config_itself_names_its_line(tmp_path):
    path = tmp_path / "c.py"
    path.write_text("x = 1\ny = = 2\n")
    with pytest.raises(SyntaxError) as err:
        check_syntax(str(path))
    assert (err.value.filename, err.value.lineno) == (str(path), 2)
    assert str(path) in str(err.value)


def test_every_shipped_config_passes_the_argument_check():
    configs = sorted(p for p in (REPO / "configs").rglob("*.py") if "_base_" not in p.parts)
    assert len(configs) > 40
    for path in configs:
        run, _ = resolve_as_launched(path)
        check_arguments(run)  # resolve_config checks too; this names the config on failure


def test_run_keys_and_valid_arguments_still_override():
    cfg = load_config(
        str(CONFIG),
        {
            "train_cfg.max_epochs": 1,
            "train_dataloader.batch_size": 16,
            "default_hooks.checkpoint.save_best": "auto",
            "param_scheduler.1.eta_min": 0.0,
        },
    )
    check_arguments(resolve_config(cfg)[0])
    assert cfg.train_cfg.max_epochs == 1 and cfg.train_dataloader.batch_size == 16


def test_kwargs_are_followed_up_the_mro_only_where_they_are_forwarded():
    from mmengine.hooks import EMAHook
    from mmengine.optim import AmpOptimWrapper, LinearLR

    # LinearLR(optimizer, *args, **kwargs) hands them to LinearParamScheduler.__init__
    assert {"start_factor", "end", "by_epoch"} <= accepted_arguments(LinearLR)
    assert {"loss_scale", "clip_grad", "accumulative_counts"} <= accepted_arguments(AmpOptimWrapper)
    assert accepted_arguments(EMAHook) is None  # its kwargs configure the EMA model: unchecked


def test_loader_dataset_sampler_and_transform_arguments_are_checked():
    cfg = Config.fromfile(str(CONFIG))
    cfg.train_dataloader.sampler.shufle = True
    cfg.val_dataloader.dataset.splitt = "test"
    cfg.train_dataloader.dataset.pipeline[1].paddin = 2
    with pytest.raises(ConfigArgumentError) as err:
        check_arguments(cfg)
    msg = str(err.value)
    assert "train_dataloader.sampler.shufle: SeededSampler" in msg and "'shuffle'" in msg
    assert "val_dataloader.dataset.splitt: FashionMNIST" in msg
    assert "train_dataloader.dataset.pipeline.1.paddin: RandomCrop" in msg
