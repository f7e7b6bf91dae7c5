"""The SLURM scripts submitted as users submit them, on a real single-node cluster.

``slurm/train.sh`` and ``slurm/imagenet_r101.sh`` go through ``sbatch`` on the test cluster
(``tests/slurm_cluster.py``: its own slurmctld, slurmd and munged), changed only by environment
variables and sbatch options: 2 tasks on CPU, gloo, DeepSpeed ZeRO-2, a tiny model on synthetic
ImageNet-layout JPEGs sharded by ``tools/make_shards.py``. Checked: the job COMPLETES with exit 0
and trains what ``torchrun --nproc_per_node 2 ... --launcher pytorch`` trains; a broken launch
FAILS; ``scancel --signal=USR1`` and ``scontrol requeue`` in the middle of an epoch make the job
checkpoint, come back and end bitwise where the uninterrupted job ends, every iteration logged
exactly once over all runs.

What this does not prove: several nodes (one node here: MASTER_ADDR is this host, no network
between nodes), GPUs/NCCL, a site's preemption policy (PreemptMode) or time-limit signal
(``--signal=B:USR1@600`` is exercised by sending USR1 to the batch shell, not by a clock).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO
from PIL import Image

from hpff_dist import compat
from hpff_dist.engine.checkpoint import MODEL_STATES_FILE

TOL = 1e-6  # tests/test_distributed.py: DeepSpeed ZeRO against the single-process reference
CLASSES, PER_CLASS, VAL_PER_CLASS = 3, 16, 4  # 48 train images
BATCH, EPOCHS = 4, 2  # per rank; 2 ranks: 6 iterations an epoch, 12 in all
ITERS_PER_EPOCH = CLASSES * PER_CLASS // (2 * BATCH)
#: Every iteration sleeps this long (a hook; the results do not change): a signal sent after a
#: logged iteration lands in the middle of the epoch, not after the run ended.
ITER_SLEEP_S = 0.3
#: Options every run of the tiny config gets, the torchrun reference included.
OPTIONS = ("strategy.zero_optimization.stage=2",)
JOB_TIMEOUT_S = 240
#: mmengine's per-iteration log line of an epoch-based loop: Epoch(train)  [2][3/6]
ITER_LINE = re.compile(r"Epoch\(train\)\s+\[(\d+)\]\[\s*(\d+)/(\d+)\]")


# ---------------------------------------------------------------------- data and config
def _write_tree(root: Path, split: str, per_class: int, seed: int) -> None:
    """Small JPEGs of varied size (upscaled noise) in the ImageNet layout split/<wnid>/."""
    rng = np.random.default_rng(seed)
    for c in range(CLASSES):
        folder = root / split / f"n{c:08d}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            h, w = (int(v) for v in rng.integers(36, 60, 2))
            small = (rng.random((h // 6, w // 6, 3)) * 255).astype(np.uint8)
            image = Image.fromarray(small).resize((w, h), Image.BICUBIC)
            image.save(folder / f"n{c:08d}_{i}.JPEG", quality=90)


def _make_shards(tree: Path, out: Path, split: str, *extra: str) -> None:
    proc = subprocess.run(
        [sys.executable, "tools/make_shards.py", str(tree), str(out), "--split", split,
         "--shard-size", "8", "--no-progress", *extra],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


SLOW_HOOK = f'''
"""Sleep after every training iteration: time for a signal to land mid-epoch."""
import time
from dataclasses import dataclass
from mmengine.hooks import Hook
from hpff_dist.registry import HOOKS


@HOOKS.register_module()
class SleepAfterIter(Hook):
    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        time.sleep({ITER_SLEEP_S})
'''

CONFIG = """
_base_ = [{datasets!r}, {runtime!r}]
custom_imports = dict(imports=["slow_iters"], allow_failed_imports=False)
custom_hooks = [dict(type="PreemptionHook"), dict(type="SleepAfterIter")]
model = dict(
    type="LocalClassifier",
    backbone=dict(type="CifarResNet", depth=8, widths=(8, 8, 8, 8)),
    method=dict(method="dgl", k=3),
    num_classes={classes},
    image_size=32,
    data_preprocessor=dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
)
_loader = dict(batch_size={batch}, num_workers=0, persistent_workers=False, pin_memory=False)
# the shards: IMAGENET_SHARDS, as the ImageNet script passes them
train_dataloader = dict(**_loader, dataset=dict(image_size=32))
val_dataloader = dict(**_loader, dataset=dict(image_size=32))
test_dataloader = val_dataloader
optim_wrapper = dict(type="OptimWrapper", optimizer=dict(type="SGD", lr=0.1, momentum=0.9))
param_scheduler = []
train_cfg = dict(by_epoch=True, max_epochs={epochs}, val_interval={epochs})
val_cfg = dict()
test_cfg = dict()
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval={epochs}))
visualizer = dict(vis_backends=[dict(type="LocalVisBackend")])
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """The tiny config and its shards: ``config``, ``shards``, ``pythonpath`` (the hook)."""
    root = tmp_path_factory.mktemp("slurm_data")
    _write_tree(root / "tree", "train", PER_CLASS, seed=1)
    _write_tree(root / "tree", "val", VAL_PER_CLASS, seed=2)
    shards = root / "shards"
    _make_shards(root / "tree", shards, "train", "--shuffle-seed", "0")
    _make_shards(root / "tree", shards, "val")
    (root / "hooks").mkdir()
    (root / "hooks" / "slow_iters.py").write_text(SLOW_HOOK)
    config = root / "tiny_wds.py"
    config.write_text(
        CONFIG.format(
            datasets=str(REPO / "configs/_base_/datasets/imagenet_webdataset.py"),
            runtime=str(REPO / "configs/_base_/default_runtime.py"),
            classes=CLASSES,
            batch=BATCH,
            epochs=EPOCHS,
        )
    )
    return {"config": config, "shards": shards, "pythonpath": root / "hooks"}


def _job_env(tiny: dict[str, Path], **extra: str) -> dict[str, str]:
    """What every run gets: the shards, the hook on PYTHONPATH, one thread per rank."""
    return {
        "IMAGENET_SHARDS": str(tiny["shards"]),
        "PYTHONPATH": str(tiny["pythonpath"]),
        "OMP_NUM_THREADS": "1",
        **extra,
    }


def _final_module(work: Path) -> dict[str, torch.Tensor]:
    compat.apply_all()
    states = work / f"epoch_{EPOCHS}.pth" / MODEL_STATES_FILE
    assert states.is_file(), sorted(p.name for p in work.iterdir())
    return torch.load(states, map_location="cpu")["module"]


@pytest.fixture(scope="module")
def torchrun_reference(tiny, tmp_path_factory) -> dict[str, torch.Tensor]:
    """The same config under ``torchrun --nproc_per_node 2 --launcher pytorch``."""
    work = tmp_path_factory.mktemp("torchrun")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(_job_env(tiny))
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "tools/train.py", str(tiny["config"]), "--launcher", "pytorch", "--work-dir", str(work),
         "--no-test", "--cfg-options", *OPTIONS],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=JOB_TIMEOUT_S,
    )  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return _final_module(work)


# ---------------------------------------------------------------------- the cluster itself
def test_a_daemon_that_cannot_start_fails_with_its_log(tmp_path, monkeypatch):
    """A config slurmctld refuses: the error names the daemon and carries its log tail, and
    the daemons already started (munged) are stopped again."""
    import slurm_cluster

    real = slurm_cluster.write_config

    def broken(*args, **kwargs) -> Path:
        conf = real(*args, **kwargs)
        conf.write_text(conf.read_text() + "NoSuchOption=1\n")
        return conf

    monkeypatch.setattr(slurm_cluster, "write_config", broken)
    started: list = []
    monkeypatch.setattr(slurm_cluster, "_start_all", _recording(slurm_cluster._start_all, started))
    with pytest.raises(slurm_cluster.ClusterError) as error:
        with slurm_cluster.start_cluster(tmp_path / "c"):
            pass
    message = str(error.value)
    # slurmctld and slurmd both refuse it; whichever is seen first names the error, and the
    # log tails of every daemon follow; the one that exited has printed its fatal line (the
    # other may not have read the file yet)
    exited = re.search(r"(slurmctld|slurmd) exited with 1", message)
    assert exited, message
    assert f"{exited.group(1)}: fatal: Unable to process configuration file" in message, message
    assert "NoSuchOption" in message
    assert started and all(proc.poll() is not None for proc in started[0].procs.values())


def _recording(function, calls: list):
    def wrapper(cluster):
        calls.append(cluster)
        return function(cluster)

    return wrapper


# ---------------------------------------------------------------------- jobs
@dataclass
class Job:
    """A submitted job: its id, work dir and output file (appended to by every restart)."""

    job_id: str
    work: Path
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def iterations(self) -> list[tuple[int, int]]:
        """(epoch, batch) of every logged training iteration, over all runs of the job."""
        return [(int(e), int(b)) for e, b, _ in ITER_LINE.findall(self.text())]


def _train_sh(cluster, tiny, tmp: Path, name: str, *args: str, env=None) -> Job:
    """``slurm/train.sh PARTITION NAME CONFIG WORK_DIR ARGS`` as a user runs it on a login node,
    sized for this machine by the scripts' environment variables only."""
    work, logs = tmp / "work", tmp / "logs"
    env = {
        **_job_env(tiny),
        "GPUS": "2",
        "GPUS_PER_NODE": "2",
        "CPUS_PER_TASK": "1",
        "GRES": "",  # no GPUs here
        "LOG_DIR": str(logs),
        "PYTHON": sys.executable,
        **(env or {}),
    }
    argv = ["slurm/train.sh", cluster.partition, name, str(tiny["config"]), str(work)]
    argv += ["--no-test", "--cfg-options", *OPTIONS, *args]
    out = cluster.run(argv, env=env, cwd=REPO).stdout
    match = re.search(r"Submitted batch job (\d+)", out)
    assert match, out
    return Job(match.group(1), work, logs / f"{name}-{match.group(1)}.out")


def _assert_completed(cluster, job: Job, restarts: int = 0):
    result = cluster.wait(job.job_id, JOB_TIMEOUT_S)
    assert (result.state, result.exit_code, result.signal) == ("COMPLETED", 0, 0), (
        result.fields,
        job.text()[-5000:],
    )
    assert result.restarts == restarts, (result.fields, job.text()[-5000:])
    return result


def _assert_every_iteration_once(job: Job) -> None:
    expected = [(e, b) for e in range(1, EPOCHS + 1) for b in range(1, ITERS_PER_EPOCH + 1)]
    assert job.iterations() == expected, job.text()[-5000:]


@pytest.fixture(scope="module")
def straight(slurm_cluster, tiny, tmp_path_factory) -> Job:
    """slurm/train.sh, uninterrupted."""
    job = _train_sh(slurm_cluster, tiny, tmp_path_factory.mktemp("straight"), "straight")
    _assert_completed(slurm_cluster, job)
    return job


def test_train_sh_completes_and_trains_what_torchrun_trains(straight, torchrun_reference):
    _assert_every_iteration_once(straight)  # 6 an epoch: 2 ranks share the 48 images
    ours = _final_module(straight.work)
    assert ours.keys() == torchrun_reference.keys()
    diff = max((ours[k].float() - torchrun_reference[k].float()).abs().max().item() for k in ours)
    assert diff < TOL, diff


def test_a_broken_launch_fails_the_job(slurm_cluster, tiny, tmp_path):
    """`--launcher pytorch` under srun (no torchrun variables): the job FAILS, non-zero."""
    job = _train_sh(slurm_cluster, tiny, tmp_path, "broken", "--launcher", "pytorch")
    result = slurm_cluster.wait(job.job_id, JOB_TIMEOUT_S)
    assert result.state == "FAILED" and result.exit_code != 0, result.fields
    assert "launcher 'pytorch' needs" in job.text(), job.text()[-3000:]
    assert result.restarts == 0  # a failure is not a preemption: no requeue


STOPPED = re.compile(
    r"(SIGUSR1|SIGTERM|a signal on another rank): stopped after iteration (\d+) "
    r"\(epoch (\d+), batch (\d+) of (\d+)\)"
)


def _interrupt_mid_epoch(cluster, job: Job, command: list[str]) -> None:
    """Run ``command`` once the job has logged iteration 2 of epoch 1 (fail at once if the job
    ends before)."""
    from slurm_cluster import FINAL_STATES

    def reached() -> bool:
        if (1, 2) in job.iterations():
            return True
        state = cluster.result(job.job_id).state
        assert state not in FINAL_STATES, (state, job.text()[-5000:])
        return False

    cluster.wait_until(reached, JOB_TIMEOUT_S, f"job {job.job_id} at iteration 2")
    cluster.run(command)


def _assert_resumed_exactly(job: Job, straight: Job, signal_names: set[str]) -> None:
    log = job.text()
    stops = STOPPED.findall(log)
    assert len(stops) == 1, log[-5000:]
    name, iteration, epoch, batch, of = stops[0]
    assert name in signal_names, stops
    assert epoch == "1" and 2 <= int(batch) < int(of), stops  # in the middle of an epoch
    assert f"resumed epoch: 0, iter: {iteration}" in log, log[-5000:]
    _assert_every_iteration_once(job)
    _assert_same_weights(_final_module(job.work), _final_module(straight.work))


def _assert_same_weights(ours: dict, theirs: dict) -> None:
    """Parameters (and BatchNorm batch counts) bitwise equal. BatchNorm running statistics are
    averaged over the ranks in place at every checkpoint (hpff_dist.engine.checkpoint:
    average_bn_buffers), so the interrupted run averaged once more than the straight one:
    the same value up to rounding, ~1e-8."""
    assert ours.keys() == theirs.keys()
    running = [k for k in ours if k.endswith(("running_mean", "running_var"))]
    assert running, "no BatchNorm statistics: the model under test changed"
    differing = [k for k in ours if k not in running and not torch.equal(ours[k], theirs[k])]
    assert not differing, differing[:10]
    spread = max((ours[k] - theirs[k]).abs().max().item() for k in running)
    assert spread < TOL, spread


def test_usr1_mid_epoch_checkpoints_requeues_and_ends_bitwise_equal(
    slurm_cluster, tiny, straight, tmp_path
):
    """`scancel --signal=USR1` reaches the tasks: they checkpoint the iteration and exit 75,
    the batch script requeues the job, the next run resumes there."""
    job = _train_sh(slurm_cluster, tiny, tmp_path, "usr1")
    _interrupt_mid_epoch(slurm_cluster, job, ["scancel", "--signal=USR1", job.job_id])
    _assert_completed(slurm_cluster, job, restarts=1)
    assert f"requeueing job {job.job_id}" in job.text()
    _assert_resumed_exactly(job, straight, {"SIGUSR1", "a signal on another rank"})


def test_imagenet_script_by_overrides_only_survives_scontrol_requeue(
    slurm_cluster, tiny, straight, tmp_path
):
    """slurm/imagenet_r101.sh as shipped (GPU-cluster #SBATCH defaults), sized for this CPU
    node by sbatch options and pointed at the tiny config by environment variables.
    `scontrol requeue` mid-epoch: SLURM sends SIGTERM to the batch shell and the tasks, they
    checkpoint within KillWait, SLURM requeues the job itself (the script must not: a TERM may
    be a scancel) and the next run resumes there."""
    work, log = tmp_path / "work", tmp_path / "r101-%j.out"
    env = _job_env(tiny, CONFIG=str(tiny["config"]), WORK_DIR=str(work), ZERO="2", BF16="False")
    env["PYTHON"] = sys.executable
    options = ["--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1"]
    options += ["--time=30", f"--output={log}"]  # > the 600 s of --signal=B:USR1@600
    job_id = slurm_cluster.sbatch(
        REPO / "slurm/imagenet_r101.sh", "--no-test", options=options, env=env, cwd=REPO
    )
    job = Job(job_id, work, tmp_path / f"r101-{job_id}.out")
    _interrupt_mid_epoch(slurm_cluster, job, ["scontrol", "requeue", job.job_id])
    _assert_completed(slurm_cluster, job, restarts=1)
    assert "SIGTERM received, forwarding to srun" in job.text()
    assert "requeueing job" not in job.text()
    _assert_resumed_exactly(job, straight, {"SIGTERM", "a signal on another rank"})


# ---------------------------------------------------------------------- the Cityscapes script
def test_cityscapes_script_by_overrides_only_trains_the_tiny_deeplab(slurm_cluster, tmp_path):
    """slurm/cityscapes_deeplabv3_r101.sh as shipped (a 1x4 GPU job), sized for this CPU node by
    sbatch options and pointed at the tiny DeepLab (tests/seg_tiny.py) and the tiny Cityscapes
    tree by environment variables, 2 iterations by --cfg-options after the script: 2 tasks
    under ZeRO-2 complete, the first submission's --resume auto starts fresh, the iteration
    loop is ours and the checkpoint is DeepSpeed's directory."""
    from cityscapes_tree import write_tree
    from seg_tiny import tiny_deeplab_cfg

    root = tmp_path / "cityscapes"
    write_tree(root)  # 3 train images: 2 a rank (DefaultSampler rounds up), 1 batch of 2
    proc = subprocess.run(
        [sys.executable, "tools/convert_cityscapes.py", str(root)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cfg = tiny_deeplab_cfg("k4_infopro_hpff", root)
    # the shipped ThroughputHook reads data_batch["images"] (mmseg's batches hold "inputs")
    cfg.custom_hooks = [dict(type="PreemptionHook")]
    cfg.visualizer.vis_backends = [dict(type="LocalVisBackend")]
    cfg.val_evaluator = dict(type="mmseg.IoUMetric", iou_metrics=["mIoU"])
    config = tmp_path / "tiny_deeplab.py"
    cfg.dump(str(config))
    work, log = tmp_path / "work", tmp_path / "deeplab-%j.out"
    env = {"CONFIG": str(config), "WORK_DIR": str(work), "ZERO": "2", "CITYSCAPES_ROOT": str(root),
           "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}  # fmt: skip
    options = ["--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1"]
    options += ["--time=30", f"--output={log}"]
    iterations = ["train_cfg.max_iters=2", "train_cfg.val_interval=2",
                  "param_scheduler.0.end=2", "default_hooks.checkpoint.interval=2",
                  "default_hooks.logger.interval=1"]  # fmt: skip
    job_id = slurm_cluster.sbatch(
        REPO / "slurm/cityscapes_deeplabv3_r101.sh", "--no-test", "--cfg-options", *iterations,
        options=options, env=env, cwd=REPO,
    )  # fmt: skip
    result = slurm_cluster.wait(job_id, JOB_TIMEOUT_S)
    text = (tmp_path / f"deeplab-{job_id}.out").read_text(errors="replace")
    assert (result.state, result.exit_code, result.restarts) == ("COMPLETED", 0, 0), (
        result.fields,
        text[-5000:],
    )
    assert "--resume auto: no checkpoint in" in text
    assert re.search(r"Iter\(train\)\s+\[2/2\]", text), text[-3000:]
    assert (work / "iter_2.pth" / MODEL_STATES_FILE).is_file()
    changes = {r["key"]: r["new"] for r in json.loads((work / "config_changes.json").read_text())}
    assert changes["train_cfg.type"] == "hpff_dist.ResumableIterBasedTrainLoop"


# ---------------------------------------------------------------------- a pipelined job
PIPELINE = ("strategy.pipeline.stages=2", "strategy.pipeline.micro_batches=2",
            "strategy.pipeline.balance=even")  # fmt: skip


def test_a_pipelined_job_trains_what_torchrun_trains(slurm_cluster, tiny, tmp_path):
    """slurm/train.sh with the 3 local modules as 2 pipeline stages (one per task): the job
    completes, each stage writes its own module-state file, and the merged model is the one
    torchrun's pipelined run of the same config ends with."""
    from hpff_dist.engine.checkpoint_files import read_checkpoint

    job = _train_sh(slurm_cluster, tiny, tmp_path / "slurm", "pipe", *PIPELINE)
    _assert_completed(slurm_cluster, job)
    assert "pipeline: 2 stages x 1 replicas" in job.text(), job.text()[-3000:]
    ckpt = job.work / f"epoch_{EPOCHS}.pth"
    assert sorted(p.name for p in ckpt.glob("mp_rank_*_model_states.pt")) == [
        "mp_rank_00_model_states.pt",
        "mp_rank_01_model_states.pt",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(_job_env(tiny))
    work = tmp_path / "torchrun"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "tools/train.py", str(tiny["config"]), "--launcher", "pytorch", "--work-dir", str(work),
         "--no-test", "--cfg-options", *OPTIONS, *PIPELINE],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=JOB_TIMEOUT_S,
    )  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    compat.apply_all()
    ours = read_checkpoint(str(ckpt))["state_dict"]
    theirs = read_checkpoint(str(work / f"epoch_{EPOCHS}.pth"))["state_dict"]
    assert ours.keys() == theirs.keys() and any("blocks.2." in k for k in ours)
    diff = max((ours[k].float() - theirs[k].float()).abs().max().item() for k in ours)
    assert diff < TOL, diff
