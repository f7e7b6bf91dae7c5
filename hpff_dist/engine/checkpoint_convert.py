"""A DeepSpeed checkpoint directory -> one plain checkpoint file anyone can load.

A DeepSpeed run leaves ``iter_N.pth/``: the module (rank 0's copy, in the training dtype), each
rank's optimizer partition (ZeRO 1/2: the fp32 master weights are split across them), and
mmengine's meta. Only DeepSpeed, with the same world size, resumes it. :func:`consolidate`
rebuilds the full fp32 weights with DeepSpeed's own ``zero_to_fp32`` (ZeRO 1/2), or takes the
module state as it is (ZeRO 0: no partitions), adds the BatchNorm buffers and the meta (config,
epoch, iteration, seed), and returns ``{'meta', 'state_dict'}``: what ``tools/test.py``,
``load_from`` and ``torch.load`` read, with no DeepSpeed installed. A pipelined run's stages
(one module-state file each) are merged into the whole model.
"""

from __future__ import annotations

import glob
import os.path as osp
from typing import Any

import torch

from hpff_dist.engine.checkpoint import MODEL_STATES_FILE, stage_state_files
from hpff_dist.engine.checkpoint_files import CheckpointError, merge_stage_modules, safe_load

__all__ = ["consolidate", "zero_stage_of"]

_OPTIM_FILES = "*_optim_states.pt"


def zero_stage_of(states: dict[str, Any]) -> int:
    """The ZeRO stage a DeepSpeed checkpoint's model states say it was written with."""
    return int(((states.get("ds_config") or {}).get("zero_optimization") or {}).get("stage", 0))


def consolidate(directory: str) -> dict[str, Any]:
    """``{'meta': ..., 'state_dict': <full fp32 weights + buffers>}`` of a DeepSpeed checkpoint
    directory written with ZeRO stage 0, 1 or 2."""
    if not osp.isfile(osp.join(directory, MODEL_STATES_FILE)):
        raise CheckpointError(
            f"{directory} is not a DeepSpeed checkpoint directory (no {MODEL_STATES_FILE}); "
            "a .pth file written by the single-process runner needs no conversion"
        )
    states = safe_load(osp.join(directory, MODEL_STATES_FILE), "cpu", mmap=True)
    stage = zero_stage_of(states)
    if len(stage_state_files(directory)) > 1:
        return _merge_pipeline_stages(directory, stage)
    if stage > 2:
        raise CheckpointError(f"{directory}: ZeRO stage {stage} is not supported (0, 1, 2)")
    module = dict(states.get("module") or {})
    if stage == 0:
        weights = {k: _fp32(v) for k, v in module.items()}
    else:
        partitions = glob.glob(osp.join(directory, _OPTIM_FILES))
        world = int(states.get("dp_world_size") or len(partitions))
        if len(partitions) != world:
            raise CheckpointError(
                f"{directory} holds {len(partitions)} optimizer partitions but was written by "
                f"{world} ranks: it is incomplete (a rank's save did not finish)"
            )
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        folder, tag = osp.split(osp.abspath(directory))
        fp32 = get_fp32_state_dict_from_zero_checkpoint(folder, tag=tag)
        unexpected = sorted(set(fp32) - set(module))
        if unexpected:
            raise CheckpointError(f"{directory}: zero_to_fp32 gave unknown keys {unexpected[:5]}")
        # the master weights where ZeRO kept them; buffers as the module state holds them
        weights = {k: _fp32(fp32[k] if k in fp32 else v) for k, v in module.items()}
    meta = dict(states.get("meta") or {})
    meta.update(converted_from=osp.abspath(directory), zero_stage=stage)
    return {"meta": meta, "state_dict": weights}


def _merge_pipeline_stages(directory: str, zero_stage: int) -> dict[str, Any]:
    """A pipelined run's checkpoint: each stage's module state, merged into the whole model.
    Every stage keeps its whole module on every replica (ZeRO 1/2 partition only optimizer
    states), so in an fp32 run the module states are the weights; a bf16 run's are bf16
    copies, whose fp32 masters are split over each stage's optimizer partitions."""
    module, meta = merge_stage_modules(directory)
    low = sorted(k for k, v in module.items() if v.is_floating_point() and v.dtype != torch.float32)
    if low and zero_stage > 0:
        raise CheckpointError(
            f"{directory}: a pipelined bf16 run at ZeRO stage {zero_stage} keeps its fp32 "
            f"weights in per-stage optimizer partitions ({low[0]} is {module[low[0]].dtype} in "
            "the module state); merging those is not supported yet. Evaluate the bf16 weights "
            "with tools/test.py CONFIG CHECKPOINT_DIR (it reads the stages directly)"
        )
    meta.update(converted_from=osp.abspath(directory), zero_stage=zero_stage)
    return {"meta": meta, "state_dict": {k: _fp32(v) for k, v in module.items()}}


def _fp32(tensor: torch.Tensor) -> torch.Tensor:
    """Floating tensors in fp32 (a bf16 run's module copy), integers (BN's counters) as saved."""
    tensor = tensor.detach().cpu()
    return tensor.float() if tensor.is_floating_point() else tensor.clone()
