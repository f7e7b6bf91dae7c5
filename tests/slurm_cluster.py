"""A real single-node SLURM cluster for the tests, living entirely in one temp dir.

:func:`start_cluster` writes a ``slurm.conf`` for this host, starts its own ``munged``,
``slurmctld`` and ``slurmd`` (foreground, so their PIDs are ours), waits until ``sinfo`` shows
the node idle and, on exit (also when a test fails), cancels every job and stops the three
daemons by PID. Everything is private to the temp dir: config, state, spool, pid and log files,
TCP ports picked free at start, and a munge socket with a freshly generated key, so a SLURM or
munge the machine already runs is never contacted, reconfigured or restarted. Clients go through
:meth:`SlurmCluster.run`, which always passes ``SLURM_CONF`` (the config names the munge socket
in ``AuthInfo``) and drops any ``SLURM_*`` of the calling environment (pytest started inside a
real job must not submit into it).

A daemon that cannot start makes the caller fail with that daemon's log tail; nothing is
skipped (the bootstrap installs the Debian packages: ``make deps``).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
PARTITION = "hpfftest"
#: Job states after which a job does not run again by itself (REQUEUED/PENDING/RUNNING do).
FINAL_STATES = frozenset(
    {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
     "DEADLINE", "PREEMPTED"}
)  # fmt: skip
#: A signalled job gets this long between SIGTERM and SIGKILL: time to write its checkpoint.
KILL_WAIT_S = 60
#: Credential lifetime, which is also how long a requeued job waits before it may start again
#: (SLURM's default, 120 s, would dominate the requeue tests).
CRED_EXPIRE_S = 5
#: Finished jobs stay in slurmctld's memory (``scontrol show job``) this long.
MIN_JOB_AGE_S = 3600


class ClusterError(RuntimeError):
    """The test cluster could not start or answer; the message carries the daemons' logs."""


@dataclass(frozen=True)
class JobResult:
    """How a job ended, from ``scontrol show job``: state, exit code of the batch script (or the
    signal that ended it) and how often SLURM restarted it."""

    job_id: str
    state: str
    exit_code: int
    signal: int
    restarts: int
    fields: dict[str, str]


@dataclass
class SlurmCluster:
    """Handle on the running test cluster: submit, watch and query jobs."""

    root: Path
    conf: Path
    node: str
    cpus: int
    partition: str = PARTITION
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    # ------------------------------------------------------------------ clients
    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """This process's environment for a SLURM client: no ``SLURM_*`` of an outer job, our
        ``SLURM_CONF``, then ``extra``."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        env["SLURM_CONF"] = str(self.conf)
        env.update(extra or {})
        return env

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        check: bool = True,
        timeout: float = 60,
        cwd: str | Path | None = None,
    ) -> subprocess.CompletedProcess:
        """A client command (``scontrol``, ``sinfo``, ``scancel`` ...) against this cluster."""
        proc = subprocess.run(
            list(argv),
            env=self.env(env),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=cwd,
        )
        if check and proc.returncode != 0:
            raise ClusterError(
                f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
                f"{self.logs()}"
            )
        return proc

    def sbatch(
        self,
        script: str | Path,
        *args: str,
        options: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
    ) -> str:
        """Submit ``script args`` with ``sbatch options`` on our partition; the job id."""
        argv = ["sbatch", "--parsable", f"--partition={self.partition}", *options, str(script)]
        out = self.run([*argv, *args], env=env, cwd=cwd).stdout.strip()
        return out.split(";")[0]

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job -o`` as a dict (``JobState``, ``ExitCode``, ``Restarts``...)."""
        out = self.run(["scontrol", "show", "job", "-o", job_id]).stdout
        return dict(re.findall(r"(\w+)=(\S*)", out))

    def result(self, job_id: str) -> JobResult:
        fields = self.job(job_id)
        code, _, sig = fields.get("ExitCode", "0:0").partition(":")
        return JobResult(
            job_id,
            fields.get("JobState", "UNKNOWN"),
            int(code),
            int(sig or 0),
            int(fields.get("Restarts", "0")),
            fields,
        )

    def wait(self, job_id: str, timeout: float, poll: float = 0.5) -> JobResult:
        """Block until the job is in a final state (COMPLETED, FAILED, ...); its result."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.result(job_id)
            if result.state in FINAL_STATES:
                return result
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"job {job_id} still {result.state} after {timeout:.0f} s: {result.fields}"
                    f"{self.logs()}"
                )
            time.sleep(poll)

    def wait_until(self, predicate, timeout: float, what: str, poll: float = 0.25) -> None:
        """Poll ``predicate()`` until true; ClusterError naming ``what`` after ``timeout``."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise ClusterError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(poll)

    def cancel_all(self) -> None:
        """SIGKILL every job of the cluster and wait until none is left running: slurmstepd
        daemonizes, so stopping slurmd alone would leave job processes behind."""
        ids = self.run(["squeue", "-h", "-o", "%i"], check=False).stdout.split()
        if not ids:
            return
        self.run(["scancel", "--full", "--signal=KILL", *ids], check=False)
        self.run(["scancel", *ids], check=False)
        try:
            self.wait_until(
                lambda: (
                    not self.run(
                        ["squeue", "-h", "-t", "R,CG", "-o", "%i"], check=False
                    ).stdout.split()
                ),
                timeout=30,
                what="cancelled jobs to end",
            )
        except ClusterError:
            pass

    # ------------------------------------------------------------------ diagnostics
    def log_file(self, daemon: str) -> Path:
        return self.root / "log" / f"{daemon}.log"

    def logs(self, lines: int = 30) -> str:
        """The tail of every daemon's log file and captured output, for error messages."""
        parts = []
        for daemon in DAEMONS:
            proc = self.procs.get(daemon)
            status = "not started" if proc is None else f"pid {proc.pid}, exit {proc.poll()}"
            for path in (self.log_file(daemon), self.log_file(daemon).with_suffix(".out")):
                if path.exists() and path.stat().st_size:
                    tail = "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
                    parts.append(f"\n--- {daemon} ({status}) {path}:\n{tail}")
            if not any(p.startswith(f"\n--- {daemon} ") for p in parts):
                parts.append(f"\n--- {daemon} ({status}): no output")
        return "".join(parts)


# ---------------------------------------------------------------------- configuration
def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports nothing listens on now (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def node_line() -> tuple[str, int, str]:
    """This host as ``slurmd -C`` sees it: node name, CPUs, and the topology fields (CPUs,
    boards, sockets, cores, threads: a config that disagrees would drain the node). Memory is
    left out: it is not a consumable here and reported values drift."""
    out = _tool("slurmd")
    proc = subprocess.run([out, "-C"], capture_output=True, text=True, timeout=30)
    first = proc.stdout.splitlines()[0] if proc.stdout else ""
    fields = dict(re.findall(r"(\w+)=(\S+)", first))
    if "NodeName" not in fields or "CPUs" not in fields:
        raise ClusterError(f"slurmd -C gave no node line: {proc.stdout}{proc.stderr}")
    keep = ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore")
    topology = " ".join(f"{k}={fields[k]}" for k in keep if k in fields)
    return fields["NodeName"], int(fields["CPUs"]), topology


def write_config(root: Path, node: str, topology: str, ports: Sequence[int]) -> Path:
    """``slurm.conf`` of a one-node, one-partition cluster under ``root`` (our own ports,
    state, spool, pid and log files, munge socket).

    KillWait gives a signalled job time to checkpoint before SIGKILL; MinJobAge keeps finished
    jobs visible to ``scontrol show job`` (no accounting database needed)."""
    ctld_port, slurmd_port = ports
    (root / "plugstack.conf").write_text("")  # not the system's /etc/slurm/plugstack.conf.d
    lines = {
        "ClusterName": "hpfftest",
        "SlurmctldHost": f"{node}(127.0.0.1)",
        "SlurmUser": "root",
        "SlurmdUser": "root",
        "SlurmctldPort": ctld_port,
        "SlurmdPort": slurmd_port,
        "AuthType": "auth/munge",
        "CredType": "cred/munge",
        "AuthInfo": f"socket={root / 'socket' / 'munge.socket'},cred_expire={CRED_EXPIRE_S}",
        "StateSaveLocation": root / "state",
        "SlurmdSpoolDir": root / "spool",
        "SlurmctldPidFile": root / "run" / "slurmctld.pid",
        "SlurmdPidFile": root / "run" / "slurmd.pid",
        "SlurmctldLogFile": root / "log" / "slurmctld.log",
        "SlurmdLogFile": root / "log" / "slurmd.log",
        "SlurmctldDebug": "info",
        "SlurmdDebug": "info",
        "PlugStackConfig": root / "plugstack.conf",
        "ProctrackType": "proctrack/linuxproc",
        "TaskPlugin": "task/none",
        "SelectType": "select/cons_tres",
        "SelectTypeParameters": "CR_CPU",
        "SwitchType": "switch/none",
        "MpiDefault": "none",
        "JobAcctGatherType": "jobacct_gather/none",
        "AccountingStorageType": "accounting_storage/none",
        "JobCompType": "jobcomp/none",
        "SchedulerType": "sched/backfill",
        "SchedulerParameters": "sched_interval=2",
        "JobRequeue": 1,
        "KillWait": KILL_WAIT_S,
        "MinJobAge": MIN_JOB_AGE_S,
        "ReturnToService": 2,
        "SlurmdTimeout": 300,
        "InactiveLimit": 0,
    }
    text = "".join(f"{k}={v}\n" for k, v in lines.items())
    text += f"NodeName={node} NodeAddr=127.0.0.1 {topology} State=UNKNOWN\n"
    text += f"PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP\n"
    conf = root / "slurm.conf"
    conf.write_text(text)
    return conf


def _tool(name: str) -> str:
    """Path of a SLURM/munge executable (the sbin ones are not on every user's PATH)."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin:/sbin")
    if path is None:
        raise ClusterError(
            f"{name} not found: the SLURM tests need Debian's slurm-wlm and munge "
            "(`make deps` installs them; see requirements-debian.txt)"
        )
    return path


# ---------------------------------------------------------------------- daemons
def _start(cluster: SlurmCluster, daemon: str, argv: list[str]) -> None:
    """Start one daemon in the foreground (its PID is the one we stop), output to its log."""
    log = open(cluster.log_file(daemon).with_suffix(".out"), "ab")
    cluster.procs[daemon] = subprocess.Popen(
        argv,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=cluster.env(),
        start_new_session=True,  # a Ctrl-C meant for pytest reaches us first: we stop them
    )
    log.close()


def _check_alive(cluster: SlurmCluster) -> None:
    for daemon, proc in cluster.procs.items():
        if proc.poll() is not None:
            raise ClusterError(
                f"{daemon} exited with {proc.returncode} while starting:{cluster.logs()}"
            )


def _wait_ready(cluster: SlurmCluster, what: str, predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        _check_alive(cluster)
        if time.monotonic() > deadline:
            raise ClusterError(
                f"timed out after {timeout:.0f} s waiting for {what}{cluster.logs()}"
            )
        time.sleep(0.2)


def _munge_works(cluster: SlurmCluster, socket_path: Path) -> bool:
    if not socket_path.exists():
        return False
    enc = subprocess.run(
        [_tool("munge"), "-n", "-S", str(socket_path)], capture_output=True, timeout=10
    )
    if enc.returncode != 0:
        return False
    dec = subprocess.run(
        [_tool("unmunge"), "-S", str(socket_path)], input=enc.stdout, capture_output=True,
        timeout=10,
    )  # fmt: skip
    return dec.returncode == 0


def _node_state(cluster: SlurmCluster) -> str:
    proc = cluster.run(["sinfo", "-h", "-N", "-n", cluster.node, "-o", "%t"], check=False)
    return proc.stdout.strip() if proc.returncode == 0 else ""


def _stop(proc: subprocess.Popen, grace: float = 15) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds: only this PID, never a name."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def _layout(root: Path) -> None:
    for sub in ("munge", "socket", "state", "spool", "run", "log"):
        (root / sub).mkdir(parents=True, exist_ok=True)
        (root / sub).chmod(0o700)  # munged refuses group/world-writable directories
    # munged wants its socket's directory searchable by all (clients of any user connect).
    (root / "socket").chmod(0o755)
    key = root / "munge" / "munge.key"
    with open(os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
        f.write(os.urandom(1024))  # our own key: never the machine's /etc/munge/munge.key


def _start_all(cluster: SlurmCluster) -> None:
    root = cluster.root
    sock = root / "socket" / "munge.socket"
    # --force: munged wants every directory above its socket searchable by all users, and
    # pytest's temp root is 0700; only root's clients (these tests) connect here anyway.
    _start(
        cluster,
        "munged",
        [_tool("munged"), "--foreground", "--force", f"--socket={sock}",
         f"--key-file={root / 'munge' / 'munge.key'}", f"--log-file={cluster.log_file('munged')}",
         f"--pid-file={root / 'run' / 'munged.pid'}", f"--seed-file={root / 'munge' / 'seed'}"],
    )  # fmt: skip
    _wait_ready(cluster, "munged", lambda: _munge_works(cluster, sock), 30)
    conf = str(cluster.conf)
    _start(cluster, "slurmctld", [_tool("slurmctld"), "-D", "-i", "-f", conf])
    _start(cluster, "slurmd", [_tool("slurmd"), "-D", "-f", conf, "-N", cluster.node])
    _wait_ready(cluster, f"node {cluster.node} idle", lambda: _node_state(cluster) == "idle", 60)


@contextmanager
def start_cluster(root: Path) -> Iterator[SlurmCluster]:
    """The running cluster under ``root``; everything stopped on exit, whatever happened."""
    if len(str(root / "socket" / "munge.socket")) > 100:  # sun_path holds 108 bytes
        raise ClusterError(f"temp dir {root} too long for a unix socket path")
    _layout(root)
    node, cpus, topology = node_line()
    conf = write_config(root, node, topology, free_ports(2))
    cluster = SlurmCluster(root=root, conf=conf, node=node, cpus=cpus)
    try:
        _start_all(cluster)
        yield cluster
    finally:
        if "slurmd" in cluster.procs and "slurmctld" in cluster.procs:
            cluster.cancel_all()
        for daemon in reversed(DAEMONS):
            if daemon in cluster.procs:
                _stop(cluster.procs[daemon])
