"""One way to start distributed training: :func:`enable`.

Launchers: ``none`` (one process), ``pytorch`` (torchrun sets RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT) and ``slurm`` (srun sets SLURM_*; DeepSpeed and torch read only the
torchrun variables, so we translate). The backend follows the hardware: nccl with GPUs, gloo
without. Everything that reads the environment takes it as an argument so it can be tested
without processes.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass

import torch

LAUNCHERS = ("none", "pytorch", "slurm")
# Below Linux's ephemeral range (32768-60999) and above the registered low ports, so a port
# derived from the job id does not collide with sockets the kernel hands out.
SLURM_PORT_BASE = 15000
SLURM_PORT_SPAN = 10000


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job."""

    launcher: str
    rank: int
    world_size: int
    local_rank: int
    backend: str
    master_addr: str | None = None
    master_port: int | None = None

    @property
    def distributed(self) -> bool:
        return self.launcher != "none"


def default_backend() -> str:
    """nccl when this process has a GPU, else gloo (nccl cannot run on CPU tensors)."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def resolve_backend(requested: str | None) -> str:
    """The configured backend, except nccl on a host without GPUs becomes gloo."""
    if requested is None or (requested == "nccl" and not torch.cuda.is_available()):
        return default_backend()
    return requested


def expand_nodelist(nodelist: str) -> list[str]:
    """Expand SLURM's compressed host list, e.g. ``gpu[01-03,07],cpu5`` ->
    ``['gpu01', 'gpu02', 'gpu03', 'gpu07', 'cpu5']``. Zero padding is kept. Used when
    ``scontrol`` is not on PATH (containers, tests)."""
    hosts: list[str] = []
    for item in _split_top_level(nodelist.strip()):
        if not item:
            continue
        match = re.fullmatch(r"([^\[\]]*)\[([^\]]+)\](.*)", item)
        if match is None:
            if "[" in item or "]" in item:
                raise ValueError(f"cannot parse SLURM node list entry {item!r} in {nodelist!r}")
            hosts.append(item)
            continue
        prefix, ranges, suffix = match.groups()
        tails = expand_nodelist(suffix) if suffix else [""]
        for part in ranges.split(","):
            if "-" in part:
                lo, hi = part.split("-", 1)
                if not (lo.isdigit() and hi.isdigit()) or int(hi) < int(lo):
                    raise ValueError(f"bad range {part!r} in SLURM node list {nodelist!r}")
                numbers = [str(n).zfill(len(lo)) for n in range(int(lo), int(hi) + 1)]
            else:
                if not part.isdigit():
                    raise ValueError(f"bad index {part!r} in SLURM node list {nodelist!r}")
                numbers = [part]
            hosts.extend(f"{prefix}{n}{tail}" for n in numbers for tail in tails)
    return hosts


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside brackets."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def first_host(nodelist: str, use_scontrol: bool = True) -> str:
    """First host of a SLURM node list: ``scontrol show hostnames`` when it works (it knows
    every syntax SLURM accepts), else our own parser (also where ``scontrol`` is installed
    but has no cluster configuration to read)."""
    if use_scontrol and shutil.which("scontrol"):
        out = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True
        )
        if out.returncode == 0 and out.stdout.split():
            return out.stdout.split()[0]
    hosts = expand_nodelist(nodelist)
    if not hosts:
        raise ValueError(f"empty SLURM node list {nodelist!r}")
    return hosts[0]


def slurm_port(job_id: int | str) -> int:
    """A master port derived from the job id, the same on every task of the job, different for
    concurrent jobs (unless their ids collide modulo the span), in 15000-24999."""
    return SLURM_PORT_BASE + int(job_id) % SLURM_PORT_SPAN


def slurm_to_torch_env(environ: Mapping[str, str], use_scontrol: bool = True) -> dict[str, str]:
    """The torchrun variables for a task started by srun. MASTER_ADDR/MASTER_PORT already in
    the environment win (a user can pin them in the sbatch script)."""
    missing = [k for k in ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_JOB_ID") if k not in environ]
    nodelist = environ.get("SLURM_JOB_NODELIST", environ.get("SLURM_NODELIST"))
    if nodelist is None:
        missing.append("SLURM_JOB_NODELIST")
    if missing:
        raise RuntimeError(
            f"launcher 'slurm' needs {', '.join(missing)} in the environment; start the job "
            "with srun (one task per GPU/process) inside sbatch/salloc"
        )
    env = {
        "RANK": environ["SLURM_PROCID"],
        "WORLD_SIZE": environ["SLURM_NTASKS"],
        "LOCAL_RANK": environ.get("SLURM_LOCALID", "0"),
        "MASTER_ADDR": environ.get("MASTER_ADDR") or first_host(nodelist, use_scontrol),
        "MASTER_PORT": environ.get("MASTER_PORT") or str(slurm_port(environ["SLURM_JOB_ID"])),
    }
    if "SLURM_NTASKS_PER_NODE" in environ:
        env["LOCAL_WORLD_SIZE"] = environ["SLURM_NTASKS_PER_NODE"].split("(")[0]
    return env


def check_launcher(launcher: str, environ: Mapping[str, str]) -> None:
    """Refuse combinations that would silently train the wrong thing.

    torchrun with ``--launcher none`` would start N independent runs, each on the whole dataset,
    all writing the same work dir; we refuse instead."""
    if launcher not in LAUNCHERS:
        raise ValueError(f"unknown launcher {launcher!r}; use one of {LAUNCHERS}")
    world = int(environ.get("WORLD_SIZE", "1"))
    if launcher == "none" and world > 1:
        raise RuntimeError(
            f"WORLD_SIZE={world} in the environment (started by torchrun?) but launcher is "
            "'none': every rank would train on the whole dataset independently. Pass "
            "--launcher pytorch (torchrun) or --launcher slurm (srun)."
        )
    if launcher == "pytorch":
        missing = [
            k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in environ
        ]
        if missing:
            raise RuntimeError(
                f"launcher 'pytorch' needs {', '.join(missing)} in the environment; start with "
                "`torchrun --nproc_per_node N tools/train.py CONFIG --launcher pytorch`"
            )


def dist_env(
    launcher: str, environ: Mapping[str, str] | None = None, backend: str | None = None
) -> DistEnv:
    """Where this process would sit, without initialising anything (the runner factory needs
    the world size before the process group exists, to derive the per-device batch)."""
    environ = os.environ if environ is None else environ
    check_launcher(launcher, environ)
    if launcher == "slurm":
        environ = {**environ, **slurm_to_torch_env(environ)}
    if launcher == "none":
        return DistEnv("none", 0, 1, 0, resolve_backend(backend))
    return DistEnv(
        launcher,
        rank=int(environ["RANK"]),
        world_size=int(environ["WORLD_SIZE"]),
        local_rank=int(environ.get("LOCAL_RANK", "0")),
        backend=resolve_backend(backend),
        master_addr=environ["MASTER_ADDR"],
        master_port=int(environ["MASTER_PORT"]),
    )


def free_port() -> int:
    """An unused TCP port on this host (for single-process groups)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def enable(
    launcher: str,
    backend: str | None = None,
    init_backend: str = "torch",
    environ: MutableMapping[str, str] | None = None,
    single_process_group: bool = False,
) -> DistEnv:
    """Set up this process for ``launcher`` and create the process group.

    ``slurm``: SLURM_* are translated into RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT
    (written to the environment, which is what DeepSpeed and torch read). ``pytorch``: torchrun
    already set them. ``none``: nothing, unless ``single_process_group`` (DeepSpeed needs a
    process group even for one process): then a world of one on a free local port.
    ``init_backend`` is ``torch`` or ``deepspeed`` (``deepspeed.init_distributed``, which also
    sets up ``deepspeed.comm``). The GPU is chosen from LOCAL_RANK when there is one. Calling it
    again once the group exists does nothing but return the environment.
    """
    environ = os.environ if environ is None else environ
    check_launcher(launcher, environ)
    if launcher == "slurm":
        environ.update(slurm_to_torch_env(environ))
    elif launcher == "none" and single_process_group:
        for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):
            environ.setdefault(key, value)
        environ.setdefault("MASTER_ADDR", "127.0.0.1")
        environ.setdefault("MASTER_PORT", str(free_port()))
    env = dist_env("pytorch" if launcher == "slurm" else launcher, environ, backend)
    env = DistEnv(
        launcher,
        env.rank,
        env.world_size,
        env.local_rank,
        env.backend,
        env.master_addr,
        env.master_port,
    )
    if launcher == "none" and not single_process_group:
        return env
    if torch.cuda.is_available():
        torch.cuda.set_device(env.local_rank % torch.cuda.device_count())
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return env
    if init_backend == "deepspeed":
        import deepspeed

        deepspeed.init_distributed(dist_backend=env.backend, auto_mpi_discovery=False)
    elif init_backend == "torch":
        torch.distributed.init_process_group(
            backend=env.backend, rank=env.rank, world_size=env.world_size
        )
    else:
        raise ValueError(f"init_backend must be 'torch' or 'deepspeed', got {init_backend!r}")
    return env
