"""The scripts of slurm/ run by bash with stub ``sbatch``/``srun``/``scontrol`` first on PATH:
what they submit and start, and how the batch shell handles signals and exit codes. Seconds,
no cluster; the real submissions are in tests/test_slurm.py.

Each stub records its argv (and the signals it got) as JSON lines in ``$STUB_LOG``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO

from hpff_dist.engine.config import load_config
from hpff_dist.engine.resolve import DEEPSPEED_STRATEGY, RESUMABLE_ITER_LOOP, resolve_config

EXIT_PREEMPTED = 75  # hpff_dist.engine.preemption.EXIT_PREEMPTED, what slurm/common.sh expects

STUB = """#!{python}
import json, os, signal, sys, time
name = os.path.basename(sys.argv[0])
log = os.environ["STUB_LOG"]
def record(**extra):
    with open(log, "a") as f:
        f.write(json.dumps(dict(prog=name, argv=sys.argv[1:], **extra)) + "\\n")
{body}
"""
BODIES = {
    "sbatch": 'record()\nprint("Submitted batch job 4242")',
    "scontrol": "record()",
    # srun: exits STUB_SRUN_EXIT; with STUB_SRUN_WAIT it first waits for USR1/TERM (recorded),
    # having written STUB_SRUN_READY when its handlers are in place.
    "srun": (
        "got = []\n"
        "for s in (signal.SIGUSR1, signal.SIGTERM):\n"
        "    signal.signal(s, lambda n, f: got.append(signal.Signals(n).name))\n"
        'if os.environ.get("STUB_SRUN_WAIT"):\n'
        '    open(os.environ["STUB_SRUN_READY"], "w").close()\n'
        "    deadline = time.monotonic() + 30\n"
        "    while not got and time.monotonic() < deadline:\n"
        "        time.sleep(0.05)\n"
        "record(signals=got)\n"
        'sys.exit(int(os.environ.get("STUB_SRUN_EXIT", "0")))'
    ),
}


@pytest.fixture
def stubs(tmp_path: Path) -> Path:
    folder = tmp_path / "stubs"
    folder.mkdir()
    for name, body in BODIES.items():
        path = folder / name
        path.write_text(STUB.format(python=sys.executable, body=body))
        path.chmod(0o755)
    return folder


def _env(tmp_path: Path, stubs: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "GPUS", "GRES"))}
    for key in ("CPUS_PER_TASK", "SRUN_ARGS", "SBATCH_ARGS", "LOG_DIR", "HPFF_SLURM_BATCH"):
        env.pop(key, None)
    env.update(PATH=f"{stubs}:{env['PATH']}", STUB_LOG=str(tmp_path / "calls.jsonl"), **extra)
    return env


def _calls(tmp_path: Path, prog: str) -> list[dict]:
    log = tmp_path / "calls.jsonl"
    lines = log.read_text().splitlines() if log.exists() else []
    return [c for c in map(json.loads, lines) if c["prog"] == prog]


def _bash(script: str, *args: str, env: dict, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(REPO / script), *args],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


# ---------------------------------------------------------------------- submission
def test_train_sh_submits_itself_with_the_mmseg_geometry(tmp_path, stubs):
    env = _env(tmp_path, stubs, GPUS="16", GPUS_PER_NODE="8", CPUS_PER_TASK="6",
               SBATCH_ARGS="--time=1:00:00 --qos=high", LOG_DIR=str(tmp_path / "logs"))  # fmt: skip
    proc = _bash("slurm/train.sh", "gpu", "r101", "configs/x.py", "wd", "--no-test", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "Submitted batch job 4242" in proc.stdout
    (call,) = _calls(tmp_path, "sbatch")
    argv = call["argv"]
    options, rest = argv[: argv.index(str(REPO / "slurm/train.sh"))], argv[-5:]
    assert rest == ["gpu", "r101", "configs/x.py", "wd", "--no-test"]
    for option in ("--partition=gpu", "--job-name=r101", f"--chdir={REPO}", "--nodes=2",
                   "--ntasks=16", "--ntasks-per-node=8", "--cpus-per-task=6", "--gres=gpu:8",
                   "--requeue", "--signal=B:USR1@600", "--open-mode=append",
                   f"--output={tmp_path}/logs/%x-%j.out", "--export=ALL,HPFF_SLURM_BATCH=1",
                   "--time=1:00:00", "--qos=high"):  # fmt: skip
        assert option in options, (option, options)
    assert (tmp_path / "logs").is_dir()  # sbatch opens --output before the job starts


def test_train_sh_defaults_and_cpu_nodes(tmp_path, stubs):
    """Defaults: 8 GPUs on one node, 5 CPUs each. GRES empty (CPU-only nodes): no --gres."""
    env = _env(tmp_path, stubs, LOG_DIR=str(tmp_path / "logs"))
    assert _bash("slurm/train.sh", "p", "j", "c.py", env=env).returncode == 0
    env = _env(tmp_path, stubs, GPUS="2", GRES="", LOG_DIR=str(tmp_path / "logs"))
    assert _bash("slurm/test.sh", "p", "j", "c.py", "ck.pth", env=env).returncode == 0
    default, cpu = (c["argv"] for c in _calls(tmp_path, "sbatch"))
    assert {"--nodes=1", "--ntasks=8", "--ntasks-per-node=8", "--cpus-per-task=5"} <= set(default)
    assert "--gres=gpu:8" in default
    assert {"--nodes=1", "--ntasks=2", "--ntasks-per-node=2"} <= set(cpu)
    assert not [a for a in cpu if a.startswith("--gres")]
    assert cpu[-5:] == [str(REPO / "slurm/test.sh"), "p", "j", "c.py", "ck.pth"]


@pytest.mark.parametrize("script", ["slurm/train.sh", "slurm/test.sh"])
def test_too_few_arguments_print_the_usage(tmp_path, stubs, script):
    proc = _bash(script, "p", "j", env=_env(tmp_path, stubs))
    assert proc.returncode == 2 and f"usage: {script} PARTITION JOB_NAME CONFIG" in proc.stderr
    assert _calls(tmp_path, "sbatch") == []


# ---------------------------------------------------------------------- in the batch job
def _in_job(tmp_path, stubs, **extra: str) -> dict[str, str]:
    return _env(tmp_path, stubs, HPFF_SLURM_BATCH="1", SLURM_JOB_ID="77", **extra)


def test_train_sh_in_the_job_starts_train_py_per_task(tmp_path, stubs):
    env = _in_job(tmp_path, stubs, SLURM_CPUS_PER_TASK="6", SRUN_ARGS="--exclusive -l")
    proc = _bash("slurm/train.sh", "p", "j", "configs/a/b.py", "wd", "--cfg-options", "x=1",
                 env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    env.pop("SLURM_CPUS_PER_TASK")
    assert _bash("slurm/train.sh", "p", "j", "configs/a/b.py", "--no-test", env=env).returncode == 0
    with_dir, default_dir = (c["argv"] for c in _calls(tmp_path, "srun"))
    assert with_dir == ["--kill-on-bad-exit=1", "--cpus-per-task=6", "--exclusive", "-l",
                        ".venv/bin/python", "-u", "tools/train.py", "configs/a/b.py",
                        "--launcher", "slurm", "--work-dir", "wd", "--resume", "auto",
                        "--cfg-options", "x=1"]  # fmt: skip
    assert default_dir[1] == "--cpus-per-task=1"
    assert default_dir[-5:] == ["--work-dir", "work_dirs/b", "--resume", "auto", "--no-test"]
    assert _calls(tmp_path, "scontrol") == []  # exit 0: nothing to requeue


def test_test_sh_in_the_job_starts_test_py_per_task(tmp_path, stubs):
    env = _in_job(tmp_path, stubs, PYTHON="/opt/py")
    proc = _bash("slurm/test.sh", "p", "j", "c.py", "ck.pth", "--out", "m.json", env=env)
    assert proc.returncode == 0, proc.stderr
    (call,) = _calls(tmp_path, "srun")
    assert call["argv"][2:] == ["/opt/py", "-u", "tools/test.py", "c.py", "ck.pth",
                                "--launcher", "slurm", "--out", "m.json"]  # fmt: skip


@pytest.mark.parametrize(
    ("srun_exit", "requeued"), [(EXIT_PREEMPTED, True), (0, False), (3, False), (137, False)]
)
def test_exit_75_requeues_the_job_other_codes_are_the_jobs(tmp_path, stubs, srun_exit, requeued):
    env = _in_job(tmp_path, stubs, STUB_SRUN_EXIT=str(srun_exit))
    proc = _bash("slurm/train.sh", "p", "j", "c.py", env=env)
    assert proc.returncode == srun_exit, proc.stderr
    requeues = [c["argv"] for c in _calls(tmp_path, "scontrol")]
    assert requeues == ([["requeue", "77"]] if requeued else [])


def _signalled_job(tmp_path, stubs, sig: signal.Signals) -> subprocess.CompletedProcess:
    """slurm/train.sh in the job, with srun waiting; ``sig`` sent to the batch shell alone."""
    ready = tmp_path / "srun_ready"
    env = _in_job(tmp_path, stubs, STUB_SRUN_WAIT="1", STUB_SRUN_READY=str(ready),
                  STUB_SRUN_EXIT=str(EXIT_PREEMPTED))  # fmt: skip
    shell = subprocess.Popen(
        ["bash", str(REPO / "slurm/train.sh"), "p", "j", "c.py"],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while not ready.exists():
        assert shell.poll() is None and time.monotonic() < deadline, shell.communicate()
        time.sleep(0.05)
    time.sleep(0.2)  # srun's handlers are in place; let bash reach its wait
    shell.send_signal(sig)
    out, err = shell.communicate(timeout=30)
    return subprocess.CompletedProcess(shell.args, shell.returncode, out, err)


def test_usr1_to_the_batch_shell_is_forwarded_and_the_job_requeued(tmp_path, stubs):
    """`--signal=B:USR1@600`: only the batch shell gets it; srun must, and the shell must keep
    waiting for srun (bash's wait returns early on a trapped signal)."""
    proc = _signalled_job(tmp_path, stubs, signal.SIGUSR1)
    assert proc.returncode == EXIT_PREEMPTED, proc.stderr
    (srun,) = _calls(tmp_path, "srun")
    assert srun["signals"] == ["SIGUSR1"]
    assert [c["argv"] for c in _calls(tmp_path, "scontrol")] == [["requeue", "77"]]


def test_term_is_forwarded_but_slurm_decides_about_the_requeue(tmp_path, stubs):
    """SIGTERM (preemption, scontrol requeue, scancel, time limit): the tasks checkpoint, but
    the script does not requeue: after a scancel that would bring a cancelled job back."""
    proc = _signalled_job(tmp_path, stubs, signal.SIGTERM)
    assert proc.returncode == EXIT_PREEMPTED, proc.stderr
    (srun,) = _calls(tmp_path, "srun")
    assert srun["signals"] == ["SIGTERM"]
    assert _calls(tmp_path, "scontrol") == []


# ---------------------------------------------------------------------- the ImageNet script
def _train_args(argv: list[str]):
    """tools/train.py's own parser applied to the command srun was given."""
    spec = importlib.util.spec_from_file_location("train_tool", REPO / "tools/train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    start = argv.index("tools/train.py")
    saved = sys.argv
    try:
        sys.argv = argv[start:]
        return module.parse_args()
    finally:
        sys.argv = saved


def test_imagenet_script_starts_a_valid_deepspeed_run(tmp_path, stubs, monkeypatch):
    """The command the shipped script gives srun (defaults only) resolves, under the SLURM
    variables of a 2x8 GPU job, to the DeepSpeed run the script promises."""
    submit_dir = tmp_path / "submit"
    submit_dir.mkdir()
    (submit_dir / "slurm").symlink_to(REPO / "slurm")
    env = _env(tmp_path, stubs, SLURM_SUBMIT_DIR=str(submit_dir), SLURM_JOB_ID="4242",
               SLURM_CPUS_PER_TASK="10", IMAGENET_SHARDS="/data/wds")  # fmt: skip
    proc = _bash("slurm/imagenet_r101.sh", env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (call,) = _calls(tmp_path, "srun")
    assert call["argv"][:2] == ["--kill-on-bad-exit=1", "--cpus-per-task=10"]
    args = _train_args(call["argv"])
    assert (args.launcher, args.resume) == ("slurm", "auto")
    assert args.work_dir == "work_dirs/resnet101_k4_infopro_hpff"
    for key, value in {
        "SLURM_PROCID": "3",
        "SLURM_NTASKS": "16",
        "SLURM_LOCALID": "3",
        "SLURM_JOB_NODELIST": "gpu[07-08]",
        "SLURM_JOB_ID": "4242",
    }.items():
        monkeypatch.setenv(key, value)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("IMAGENET_SHARDS", "/data/wds")
    # the stub scontrol answers nothing: the launcher parses the node list itself (a real
    # scontrol without a cluster config, as on this machine, would fail)
    monkeypatch.setenv("PATH", env["PATH"])
    monkeypatch.setenv("STUB_LOG", env["STUB_LOG"])
    cfg = load_config(str(REPO / args.config), args.cfg_options)
    cfg.launcher = args.launcher
    prepared, _ = resolve_config(cfg)
    assert prepared.strategy["type"] == DEEPSPEED_STRATEGY  # filled in: overrides gave no type
    assert prepared.strategy["zero_optimization"]["stage"] == 1
    assert prepared.strategy["bf16"]["enabled"] is True
    assert prepared.train_dataloader.root == "/data/wds"  # DALI loader dict


def test_imagenet_script_needs_the_shards(tmp_path, stubs):
    env = _env(tmp_path, stubs, SLURM_SUBMIT_DIR=str(REPO))
    proc = _bash("slurm/imagenet_r101.sh", env=env)
    assert proc.returncode != 0 and "set IMAGENET_SHARDS" in proc.stderr
    assert _calls(tmp_path, "srun") == []


# ---------------------------------------------------------------------- the Cityscapes script
CITYSCAPES_SCRIPT = "slurm/cityscapes_deeplabv3_r101.sh"


def _cityscapes_env(tmp_path: Path, stubs: Path, **extra: str) -> dict[str, str]:
    env = _env(tmp_path, stubs, **extra)
    for key in [k for k in env if k.startswith("CITYSCAPES_") and k not in extra]:
        del env[key]  # only what the test gives
    return env


def _sbatch_options(script: str) -> set[str]:
    lines = (REPO / script).read_text().splitlines()
    return {line.split(maxsplit=1)[1] for line in lines if line.startswith("#SBATCH ")}


def test_cityscapes_script_starts_mmsegs_4xb2_deepspeed_run(tmp_path, stubs, monkeypatch):
    """The command the shipped script gives srun (defaults only) resolves, under the SLURM
    variables of its own 1 node x 4 GPU job, to mmseg's schedule: 4 tasks x 2 images, the
    resumable iteration loop for 40k iterations, DeepSpeed ZeRO-1 in fp32, the data folder
    from CITYSCAPES_ROOT, --resume auto."""
    submit_dir = tmp_path / "submit"
    submit_dir.mkdir()
    (submit_dir / "slurm").symlink_to(REPO / "slurm")
    env = _cityscapes_env(tmp_path, stubs, SLURM_SUBMIT_DIR=str(submit_dir),
                          SLURM_JOB_ID="4243", SLURM_CPUS_PER_TASK="8",
                          CITYSCAPES_ROOT="/data/cityscapes")  # fmt: skip
    proc = _bash(CITYSCAPES_SCRIPT, "--no-test", env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (call,) = _calls(tmp_path, "srun")
    assert call["argv"][:2] == ["--kill-on-bad-exit=1", "--cpus-per-task=8"]
    args = _train_args(call["argv"])
    assert args.config == "configs/cityscapes/deeplabv3_r101_d8_k4_infopro_hpff.py"
    assert (args.launcher, args.resume, args.no_test) == ("slurm", "auto", True)
    assert args.work_dir == "work_dirs/deeplabv3_r101_d8_k4_infopro_hpff"
    options = _sbatch_options(CITYSCAPES_SCRIPT)
    assert {"--nodes=1", "--ntasks-per-node=4", "--gpus-per-node=4", "--requeue",
            "--signal=B:USR1@600", "--open-mode=append"} <= options  # fmt: skip
    for key, value in {
        "SLURM_PROCID": "3",
        "SLURM_NTASKS": "4",
        "SLURM_LOCALID": "3",
        "SLURM_JOB_NODELIST": "gpu07",
        "SLURM_JOB_ID": "4243",
    }.items():
        monkeypatch.setenv(key, value)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("CITYSCAPES_ROOT", "/data/cityscapes")  # what the tasks inherit
    monkeypatch.setenv("PATH", env["PATH"])  # the stub scontrol (see the ImageNet test)
    monkeypatch.setenv("STUB_LOG", env["STUB_LOG"])
    cfg = load_config(str(REPO / args.config), args.cfg_options)
    cfg.launcher = args.launcher
    prepared, _ = resolve_config(cfg)
    assert prepared.strategy["type"] == DEEPSPEED_STRATEGY
    assert prepared.strategy["zero_optimization"]["stage"] == 1
    assert prepared.strategy["bf16"]["enabled"] is False
    assert prepared.train_cfg.type == RESUMABLE_ITER_LOOP
    assert prepared.train_cfg.max_iters == 40000
    assert prepared.default_hooks.checkpoint.by_epoch is False  # iter_N.pth
    assert 4 * prepared.train_dataloader.batch_size == 8  # mmseg's 4xb2
    for loader in ("train_dataloader", "val_dataloader"):
        assert prepared[loader].dataset.data_root == "/data/cityscapes"


@pytest.mark.parametrize(
    "data",
    [{"CITYSCAPES_ROOT": "/data/cs"}, {"CITYSCAPES_SHARDS": "/data/cs-wds"},
     {"CITYSCAPES_ROOT": "/data/cs", "CITYSCAPES_SHARDS": "/data/cs-wds"}],
)  # fmt: skip
def test_cityscapes_script_passes_the_data_location_to_the_tasks(tmp_path, stubs, data):
    """CITYSCAPES_ROOT (the folder configs) and CITYSCAPES_SHARDS (for shard configs) reach
    the tasks' environment."""
    body = 'record(env={k: v for k, v in os.environ.items() if k.startswith("CITYSCAPES_")})'
    (stubs / "srun").write_text(STUB.format(python=sys.executable, body=body))
    env = _cityscapes_env(tmp_path, stubs, SLURM_SUBMIT_DIR=str(REPO), **data)
    proc = _bash(CITYSCAPES_SCRIPT, env=env)
    assert proc.returncode == 0, proc.stderr
    (call,) = _calls(tmp_path, "srun")
    assert call["env"] == data


def test_cityscapes_script_needs_the_data(tmp_path, stubs):
    env = _cityscapes_env(tmp_path, stubs, SLURM_SUBMIT_DIR=str(REPO))
    proc = _bash(CITYSCAPES_SCRIPT, env=env)
    assert proc.returncode == 2 and "set CITYSCAPES_ROOT" in proc.stderr
    assert _calls(tmp_path, "srun") == []


@pytest.mark.parametrize("backend", ["wds", "dali"])
def test_cityscapes_script_trains_a_shard_config_from_cityscapes_shards(
    tmp_path, stubs, monkeypatch, backend
):
    """CONFIG=<experiment>_<backend>.py with CITYSCAPES_SHARDS only: the tasks' config reads
    its loaders from the shards (webdataset: the dataset's root; DALI: the loader's root)."""
    config = f"configs/cityscapes/deeplabv3_r101_d8_k4_infopro_hpff_{backend}.py"
    env = _cityscapes_env(tmp_path, stubs, SLURM_SUBMIT_DIR=str(REPO), CONFIG=config,
                          CITYSCAPES_SHARDS="/data/cs-wds")  # fmt: skip
    proc = _bash(CITYSCAPES_SCRIPT, "--no-test", env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (call,) = _calls(tmp_path, "srun")
    args = _train_args(call["argv"])
    assert args.config == config
    assert args.work_dir == f"work_dirs/deeplabv3_r101_d8_k4_infopro_hpff_{backend}"
    monkeypatch.setenv("CITYSCAPES_SHARDS", "/data/cs-wds")
    monkeypatch.delenv("CITYSCAPES_ROOT", raising=False)
    cfg = load_config(str(REPO / args.config), args.cfg_options)
    for loader in ("train_dataloader", "val_dataloader"):
        entry = cfg[loader]
        root = entry.dataset.root if backend == "wds" else entry.root
        assert root == "/data/cs-wds"
    assert cfg.model.method.method == "infopro_hpff" and cfg.train_cfg.max_iters == 40000
