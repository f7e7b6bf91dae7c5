"""``LocalPipelineStrategy`` on 4 localhost processes (torchrun + gloo): P=2 stages x D=2
replicas with DeepSpeed ZeRO 0/1/2 over each stage's replicas, against the single-process model
on the same micro-batches (``tests/dist_scripts/pipeline_engine.py``), plus inference through
the stages, per-stage checkpoint files, their merge, and an exact resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "dist_scripts" / "pipeline_engine.py"
TOL = 1e-6  # float32


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("pipeline_engine") / "results.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "4"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run(
        [*cmd, str(SCRIPT), str(out)], capture_output=True, text=True, timeout=600, env=env
    )
    if proc.returncode != 0:
        pytest.fail("\n".join((proc.stdout + proc.stderr).splitlines()[-60:]))
    return json.loads(out.read_text())


@pytest.mark.parametrize(
    "case",
    [f"{m}/zero{z}" for m in ("dgl", "dgl_hpff") for z in (0, 1, 2)]
    + ["dgl_hpff/zero1/clip", "dgl_hpff/zero2/measured"],
)
def test_p2_x_d2_equals_the_single_process_run(results, case):
    r = results[case]
    assert r["moved"] > 1e-3, "parameters did not train: the comparison would be vacuous"
    assert r["diff"] < TOL, r
    # The two stages of a replica hold every parameter once between them.
    assert r["held_by_replica0"] == r["total"]
    # The log is the whole model's: the last stage's task values reach every rank.
    assert {"acc", "ce_last", "loss_ind"} <= set(r["log_keys"])


def test_bf16_runs_through_the_stages_close_to_fp32(results):
    r = results["dgl_hpff/zero1/bf16"]
    assert r["moved"] > 1e-3 and r["held_by_replica0"] == r["total"]
    # bf16 parameters are rounded to 2^-7 relative (0.008 near 1): the same bound as the
    # data-parallel bf16 test (tests/test_distributed.py); a wrong h would not stay within it
    assert r["diff"] < 5e-2, r


def test_clipping_sees_the_whole_models_norm(results):
    # Clipped at 0.05 the step is far smaller: had each stage clipped its own (smaller) norm,
    # the parameters would differ from the reference's by much more than float32 rounding.
    clipped, free = results["dgl_hpff/zero1/clip"], results["dgl_hpff/zero1"]
    assert clipped["moved"] < 0.2 * free["moved"]
    assert clipped["diff"] < 1e-3 * clipped["moved"]


def test_each_stage_writes_its_own_file_and_the_merge_is_the_whole_model(results):
    merged = results["merged"]
    assert merged["files"] == ["mp_rank_00_model_states.pt", "mp_rank_01_model_states.pt"]
    assert merged["keys_equal"] and merged["diff"] < TOL


def test_inference_through_the_stages_equals_the_merged_model(results):
    assert results["val_step"]["diff"] < 1e-5


def test_resume_continues_exactly(results):
    assert results["resume"]["diff"] == 0.0


# ---------------------------------------------------------------------- without processes
CONFIG = (
    Path(__file__).resolve().parents[1] / "configs/fashion_mnist/resnet32_k16_dgl_hpff_pipe2.py"
)


def _resolve(world: int, launcher: str = "pytorch", **options):
    from hpff_dist.engine.config import load_config
    from hpff_dist.engine.launchers import DistEnv
    from hpff_dist.engine.resolve import resolve_config

    cfg = load_config(str(CONFIG), options or None)
    cfg.launcher = launcher
    return resolve_config(cfg, DistEnv(launcher, 0, world, 0, "gloo"))


def test_a_pipeline_config_resolves_with_every_change_on_record():
    run, changes = _resolve(4, **{"strategy.global_batch_size": 512})
    assert run.strategy.type == "hpff_dist.LocalPipelineStrategy"
    assert run.train_dataloader.sampler == dict(
        type="hpff_dist.ReplicaSeededSampler", shuffle=True, stages=2
    )
    assert run.val_cfg.type == "hpff_dist.PipelineValLoop" and run.val_cfg.stages == 2
    # 4 processes = 2 stages x 2 replicas: the global batch splits over the replicas only
    assert run.train_dataloader.batch_size == 256
    keys = {c.key for c in changes}
    assert {"strategy.type", "train_dataloader.sampler.type", "test_cfg.type"} <= keys


@pytest.mark.parametrize(
    "world, launcher, options, message",
    [
        (1, "none", {}, "runs one stage per process"),
        (3, "pytorch", {}, "must divide the 3 processes"),
        (2, "pytorch", {"train_dataloader.sampler.type": "InfiniteSampler"}, "cannot be split by pipeline replica"),
    ],
)  # fmt: skip
def test_pipeline_configs_that_cannot_run_are_named(world, launcher, options, message):
    with pytest.raises(ValueError, match=message):
        _resolve(world, launcher, **options)


def test_strategy_pipeline_keys_are_checked():
    from hpff_dist.engine.deepspeed.policy import DeepSpeedConfigError
    from hpff_dist.engine.pipeline.strategy import check_pipeline_cfg

    assert check_pipeline_cfg(dict(stages=2))["balance"] == "measured"
    for bad, message in [
        (dict(stages=2, microbatches=4), "unknown strategy.pipeline keys"),
        (dict(stages=0), "stages must be an int >= 1"),
        (dict(stages=2, balance="fast"), "balance must be one of"),
        (dict(stages=2, stage_modules=[3, 3, 3]), "names 3 stages"),
    ]:
        with pytest.raises(DeepSpeedConfigError, match=message):
            check_pipeline_cfg(bad)


def test_a_stage_checkpoint_with_a_missing_or_doubled_stage_is_refused(tmp_path):
    import torch

    from hpff_dist.engine.checkpoint_files import CheckpointError, merge_stage_modules

    def write(name, module, stages=2):
        torch.save({"module": module, "mp_world_size": stages, "meta": {}}, tmp_path / name)

    write("mp_rank_00_model_states.pt", {"a": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="incomplete"):
        merge_stage_modules(str(tmp_path))
    write("mp_rank_01_model_states.pt", {"a": torch.ones(1)})
    with pytest.raises(CheckpointError, match="both hold"):
        merge_stage_modules(str(tmp_path))
    write("mp_rank_01_model_states.pt", {"b": torch.ones(1)})
    module, meta = merge_stage_modules(str(tmp_path))
    assert set(module) == {"a", "b"} and meta["pipeline_stages"] == 2


def test_stage_logs_merge_into_the_whole_models():
    import torch

    from hpff_dist.engine.pipeline.wrappers import merge_stage_logs

    stage0 = {
        "loss_ind": torch.tensor(1.0),
        "loss_cas": torch.tensor(2.0),
        "m00/ind": torch.tensor(3.0),
    }
    stage1 = {
        "loss_ind": torch.tensor(0.5),
        "ce_last": torch.tensor(0.7),
        "acc": torch.tensor(50.0),
    }
    merged = merge_stage_logs([stage0, stage1])
    assert {k: v.item() for k, v in merged.items()} == pytest.approx({
        "loss_ind": 1.5, "loss_cas": 2.0, "m00/ind": 3.0, "ce_last": 0.7, "acc": 50.0,
    })  # fmt: skip
