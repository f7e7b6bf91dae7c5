"""Checkpoint checks before DeepSpeed loads: torch's safe loader only, readable refusals."""

from __future__ import annotations

import os
from collections import OrderedDict

import numpy as np
import pytest
import torch
from mmengine.config import ConfigDict
from mmengine.logging import MessageHub

from hpff_dist import compat
from hpff_dist.engine.checkpoint import (
    MODEL_STATES_FILE,
    check_deepspeed_checkpoint,
    load_deepspeed_module_state,
)


def _model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))


def _write_model_states(directory, module: torch.nn.Module, **extra) -> str:
    """A file laid out as DeepSpeed 0.19 + mmengine write ``mp_rank_00_model_states.pt``:
    the module state, DeepSpeed's bookkeeping, and mmengine's client state (message hub with
    history buffers and numpy scalars, meta, a ConfigDict)."""
    compat.apply_all()  # as build_runner: the message hub pickles without getattr
    hub = MessageHub.get_instance("checkpoint-test")
    hub.update_scalar("train/loss", np.float64(0.25))
    hub.update_info("iter", 4)
    state = {
        "module": module.state_dict(),
        "buffer_names": ["1.running_mean"],
        "optimizer": None,
        "param_shapes": [OrderedDict((k, v.shape) for k, v in module.named_parameters())],
        "frozen_param_shapes": OrderedDict(),
        "shared_params": {},
        "global_steps": 4,
        "dp_world_size": 2,
        "ds_config": {"zero_optimization": {"stage": 2}, "gradient_clipping": 0.0},
        "ds_version": "0.19.8",
        "meta": {"seed": 0, "cfg": ConfigDict(a=1)},
        "message_hub": hub.state_dict(),
        **extra,
    }
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, MODEL_STATES_FILE)
    torch.save(state, path)
    return path


def test_module_state_loads_with_the_safe_loader(tmp_path):
    model = _model()
    path = _write_model_states(tmp_path / "iter_4.pth", model)
    saved = load_deepspeed_module_state(path)
    assert saved.keys() == model.state_dict().keys()
    assert torch.equal(saved["0.weight"], model.state_dict()["0.weight"])
    check_deepspeed_checkpoint(str(tmp_path / "iter_4.pth"), model)  # same model: no error


def test_the_check_leaves_the_process_wide_allow_list_alone(tmp_path):
    # What compat allows for every mmengine checkpoint must survive our one-off load.
    path = _write_model_states(tmp_path / "iter_4.pth", _model())
    before = set(torch.serialization.get_safe_globals())
    assert set(compat.mmengine_checkpoint_globals()) <= before
    load_deepspeed_module_state(path)
    assert set(torch.serialization.get_safe_globals()) == before


def test_checkpoint_from_another_model_is_refused_with_names(tmp_path):
    _write_model_states(tmp_path / "iter_4.pth", _model())
    other = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8))
    with pytest.raises(
        ValueError, match=r"different model.*shape mismatch: 0.bias \(4,\) vs \(8,\)"
    ):
        check_deepspeed_checkpoint(str(tmp_path / "iter_4.pth"), other)


def test_a_file_with_code_references_is_not_unpickled(tmp_path):
    # weights_only=False would unpickle this and check the shapes; the safe loader refuses it,
    # so the check is skipped (DeepSpeed's own load still follows) instead of running pickles.
    path = _write_model_states(tmp_path / "iter_4.pth", _model(), hook=os.getcwd)
    assert load_deepspeed_module_state(path) is None
    other = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3))
    check_deepspeed_checkpoint(str(tmp_path / "iter_4.pth"), other)  # skipped, no error


def test_not_a_deepspeed_checkpoint(tmp_path):
    single = tmp_path / "epoch_1.pth"
    torch.save({"state_dict": {}}, single)
    with pytest.raises(ValueError, match="single-file checkpoint"):
        check_deepspeed_checkpoint(str(single), _model())
    with pytest.raises(FileNotFoundError, match=MODEL_STATES_FILE):
        check_deepspeed_checkpoint(str(tmp_path), _model())
