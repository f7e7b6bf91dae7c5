"""The bootstrap path (`make deps` / `make venv` -> tools/bootstrap.sh), independent of this
machine's state: `dpkg`, `apt-get`, `sudo`, `id` and the venv's Python are stub executables
first on a PATH that holds nothing else, and each stub records its argv and environment."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO


def _listed_packages() -> list[str]:
    """requirements-debian.txt as the script reads it: comments and blank lines dropped."""
    text = (REPO / "requirements-debian.txt").read_text()
    return [word for line in text.splitlines() for word in line.split("#")[0].split()]


PACKAGES = _listed_packages()
PACKAGE_LIST = " ".join(PACKAGES)
#: Left out on a machine with its own SLURM (the script's is_slurm_package).
SLURM_PACKAGES = [p for p in PACKAGES if p.startswith("slurm") or p == "munge"]
APT_ENV = {"DEBIAN_FRONTEND": "noninteractive"}
# Real tools the Makefile and the script use; everything else on PATH is a stub.
REAL_TOOLS = ("bash", "env", "sed", "tr", "grep", "cat", "sha256sum", "cut", "rm", "touch", "mkdir")

STUB = """#!{python}
import json, os, sys
name = os.path.basename(sys.argv[0])
with open(os.environ["STUB_LOG"], "a") as f:
    f.write(json.dumps(dict(prog=name, argv=sys.argv[1:], env=dict(os.environ))) + "\\n")
{body}
"""
BODIES = {
    "id": 'print(os.environ["STUB_UID"] if sys.argv[1:] == ["-u"] else "uid=stub")',
    # dpkg -s PKG: installed when named in STUB_INSTALLED (dpkg's own status line and codes).
    "dpkg": (
        "pkg = sys.argv[-1]\n"
        'if sys.argv[1] == "-s" and pkg in os.environ.get("STUB_INSTALLED", "").split():\n'
        '    print(f"Package: {pkg}\\nStatus: install ok installed")\n'
        "else:\n"
        "    print(f\"dpkg-query: package '{pkg}' is not installed\", file=sys.stderr)\n"
        "    sys.exit(1)"
    ),
    "apt-get": "sys.exit(0)",
    # sudo runs its command as env would: VAR=value assignments, then the program.
    "sudo": 'os.execvp("env", ["env", *sys.argv[1:]])',
}


def _stub(path: Path, body: str) -> None:
    path.write_text(STUB.format(python=sys.executable, body=body))
    path.chmod(0o755)


def _repo_copy(tmp_path: Path) -> Path:
    """The files the bootstrap reads, in a fresh folder (nothing of this checkout's .venv)."""
    repo = tmp_path / "repo"
    (repo / "tools").mkdir(parents=True)
    for name in (
        "Makefile",
        "pyproject.toml",
        "requirements.txt",
        "requirements.lock",
        "requirements-debian.txt",
        "tools/bootstrap.sh",
    ):
        shutil.copy(REPO / name, repo / name)
    return repo


def _path(tmp_path: Path, stubs: dict[str, str]) -> str:
    """A PATH of the given stubs (name -> body) plus the real tools above, and nothing else."""
    stub_dir, tool_dir = tmp_path / "stubs", tmp_path / "tools"
    shutil.rmtree(stub_dir, ignore_errors=True)
    stub_dir.mkdir()
    tool_dir.mkdir(exist_ok=True)
    for name, body in stubs.items():
        _stub(stub_dir / name, body)
    for name in REAL_TOOLS:
        real = shutil.which(name)
        assert real, f"{name} not found on this machine"
        if not (tool_dir / name).exists():
            (tool_dir / name).symlink_to(real)
    return f"{stub_dir}:{tool_dir}"


def _run(tmp_path: Path, target: str, *, uid: int, installed: str = "", stubs=None, env=None):
    """``make TARGET`` in a copy of the repo (made once per test) with the stubs on PATH.

    ``stubs``: names of BODIES, or a dict name -> body. Returns the process and the calls the
    stubs recorded during this run."""
    repo = tmp_path / "repo"
    if not repo.exists():
        _repo_copy(tmp_path)
    stubs = stubs if stubs is not None else ("id", "dpkg", "apt-get", "sudo")
    if not isinstance(stubs, dict):
        stubs = {name: BODIES[name] for name in stubs}
    log = tmp_path / "calls.jsonl"
    log.unlink(missing_ok=True)
    run_env = {
        "PATH": _path(tmp_path, stubs),
        "HOME": str(tmp_path),
        "STUB_LOG": str(log),
        "STUB_UID": str(uid),
        "STUB_INSTALLED": installed,
        **(env or {}),
    }
    make = shutil.which("make")
    assert make, "make not found"
    proc = subprocess.run(
        [make, "-s", "-C", str(repo), target],
        env=run_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return proc, calls


def _programs(calls, *names):
    return [(c["prog"], c["argv"]) for c in calls if c["prog"] in names]


def _apt_calls(packages: list[str]) -> list[list[str]]:
    return [["update", "-qq"], ["install", "-y", "-qq", "--no-install-recommends", *packages]]


APT_CALLS = _apt_calls(PACKAGES)


def test_root_installs_missing_package_without_sudo(tmp_path):
    proc, calls = _run(tmp_path, "deps", uid=0)
    assert proc.returncode == 0, proc.stderr
    assert _programs(calls, "apt-get", "sudo") == [("apt-get", argv) for argv in APT_CALLS]
    for call in calls:
        if call["prog"] == "apt-get":
            assert call["env"]["DEBIAN_FRONTEND"] == "noninteractive"
    assert f"installing Debian packages: {PACKAGE_LIST}" in proc.stdout


def test_non_root_installs_through_sudo(tmp_path):
    proc, calls = _run(tmp_path, "deps", uid=1000)
    assert proc.returncode == 0, proc.stderr
    expected = []
    for argv in APT_CALLS:
        expected += [("sudo", ["DEBIAN_FRONTEND=noninteractive", "apt-get", *argv])]
        expected += [("apt-get", argv)]
    assert _programs(calls, "apt-get", "sudo") == expected
    for call in calls:
        if call["prog"] == "apt-get":
            assert call["env"]["DEBIAN_FRONTEND"] == "noninteractive"


def test_nothing_runs_when_everything_is_installed(tmp_path):
    proc, calls = _run(tmp_path, "deps", uid=0, installed=PACKAGE_LIST)
    assert proc.returncode == 0, proc.stderr
    assert _programs(calls, "dpkg") == [("dpkg", ["-s", p]) for p in PACKAGES]
    assert _programs(calls, "apt-get", "sudo") == []
    assert proc.stdout == ""


def test_no_apt_get_names_the_packages(tmp_path):
    proc, calls = _run(tmp_path, "deps", uid=0, stubs=("id", "dpkg", "sudo"))
    assert proc.returncode != 0
    assert f"missing Debian packages: {PACKAGE_LIST}" in proc.stderr
    assert "no apt-get" in proc.stderr
    assert f"apt-get install -y {PACKAGE_LIST}" in proc.stderr  # what to run by hand
    assert _programs(calls, "sudo") == []


def test_non_root_without_sudo_names_the_packages(tmp_path):
    proc, calls = _run(tmp_path, "deps", uid=1000, stubs=("id", "dpkg", "apt-get"))
    assert proc.returncode != 0
    assert f"missing Debian packages: {PACKAGE_LIST}" in proc.stderr
    assert "no sudo" in proc.stderr
    assert _programs(calls, "apt-get") == []


def test_removed_package_with_config_files_counts_as_missing(tmp_path):
    """`dpkg -s` exits 0 for a removed package that left configuration files behind."""
    removed = 'print(f"Package: {sys.argv[-1]}\\nStatus: deinstall ok config-files")'
    stubs = {**{n: BODIES[n] for n in ("id", "apt-get", "sudo")}, "dpkg": removed}
    proc, calls = _run(tmp_path, "deps", uid=0, stubs=stubs)
    assert proc.returncode == 0, proc.stderr
    assert _programs(calls, "apt-get") == [("apt-get", argv) for argv in APT_CALLS]


PIP_STUB = """#!{python}
import json, os, sys
with open(os.environ["STUB_LOG"], "a") as f:
    f.write(json.dumps(dict(prog="pip", argv=sys.argv[1:], env=dict(os.environ))) + "\\n")
"""
# `python -m venv DIR` makes DIR/bin/pip: a stub that records what would be installed.
PYTHON_BODY = (
    'assert sys.argv[1:3] == ["-m", "venv"], sys.argv\n'
    'bin_dir = os.path.join(sys.argv[3], "bin")\n'
    "os.makedirs(bin_dir)\n"
    'with open(os.path.join(bin_dir, "pip"), "w") as f:\n'
    '    f.write(os.environ["PIP_STUB"])\n'
    'os.chmod(os.path.join(bin_dir, "pip"), 0o755)'
)


def test_venv_is_built_once_and_keyed_on_the_requirements(tmp_path):
    stubs = {**{n: BODIES[n] for n in ("id", "dpkg", "apt-get", "sudo")}, "python3.11": PYTHON_BODY}
    env = {"PIP_STUB": PIP_STUB.format(python=sys.executable)}
    proc, calls = _run(tmp_path, "venv", uid=0, installed=PACKAGE_LIST, stubs=stubs, env=env)
    assert proc.returncode == 0, proc.stderr
    assert _programs(calls, "python3.11") == [("python3.11", ["-m", "venv", ".venv"])]
    editable = ["install", "-q", "--no-deps", "--no-build-isolation", "-e", "."]
    editable += ["--config-settings", "editable_mode=compat"]
    assert [argv for _, argv in _programs(calls, "pip")] == [
        ["install", "-q", "torch==2.14.1", "torchvision==0.29.1"],
        ["install", "-q", "-r", "requirements.lock", "-r", "requirements.txt"],
        editable,
    ]
    assert all(c["env"]["DS_BUILD_OPS"] == "0" for c in calls if c["prog"] == "pip")

    # A second run installs nothing.
    proc, calls = _run(tmp_path, "venv", uid=0, installed=PACKAGE_LIST, stubs=stubs, env=env)
    assert proc.returncode == 0, proc.stderr
    assert _programs(calls, "python3.11", "pip", "apt-get", "sudo") == []

    # A changed pyproject.toml redoes only the editable install; a changed lock file all.
    with open(tmp_path / "repo/pyproject.toml", "a") as f:
        f.write("# changed\n")
    proc, calls = _run(tmp_path, "venv", uid=0, installed=PACKAGE_LIST, stubs=stubs, env=env)
    assert [argv for _, argv in _programs(calls, "pip", "python3.11")] == [editable]
    with open(tmp_path / "repo/requirements.lock", "a") as f:
        f.write("# changed\n")
    proc, calls = _run(tmp_path, "venv", uid=0, installed=PACKAGE_LIST, stubs=stubs, env=env)
    assert _programs(calls, "python3.11") == [("python3.11", ["-m", "venv", ".venv"])]
    assert len(_programs(calls, "pip")) == 3


# `df -Pk DIR`: POSIX output with STUB_FREE_KIB available (the fourth field of the second line).
DF_BODY = (
    'print("Filesystem 1024-blocks Used Available Capacity Mounted on")\n'
    "print(f\"/dev/stub 100000000 1 {os.environ['STUB_FREE_KIB']} 1% /\")"
)


def test_venv_build_stops_first_when_the_disk_is_too_full(tmp_path):
    stubs = {**{n: BODIES[n] for n in ("id", "dpkg", "apt-get", "sudo")}, "python3.11": PYTHON_BODY}
    stubs["df"] = DF_BODY
    env = {"PIP_STUB": PIP_STUB.format(python=sys.executable), "STUB_FREE_KIB": str(3 * 1024**2)}
    proc, calls = _run(tmp_path, "venv", uid=0, installed=PACKAGE_LIST, stubs=stubs, env=env)
    assert proc.returncode != 0
    assert "only 3 GiB free" in proc.stderr and "VENV=" in proc.stderr, proc.stderr
    assert [c["argv"] for c in calls if c["prog"] == "df"] == [["-Pk", "."]]
    assert _programs(calls, "python3.11", "pip") == []  # nothing half-installed
    # The bar is the user's: lowered, the same disk is enough.
    proc, calls = _run(
        tmp_path,
        "venv",
        uid=0,
        installed=PACKAGE_LIST,
        stubs=stubs,
        env={**env, "VENV_MIN_FREE_GIB": "2"},
    )
    assert proc.returncode == 0, proc.stderr
    assert _programs(calls, "python3.11") == [("python3.11", ["-m", "venv", ".venv"])]


def test_bootstrap_script_refuses_unknown_step(tmp_path):
    proc = subprocess.run(
        ["bash", str(REPO / "tools/bootstrap.sh"), "everything"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode != 0
    assert "usage: tools/bootstrap.sh [debian|venv|all]" in proc.stderr


def test_no_dpkg_counts_every_package_as_missing(tmp_path):
    """Not a Debian system: nothing can be checked, so apt-get (if any) installs all."""
    proc, calls = _run(tmp_path, "deps", uid=0, stubs=("id", "apt-get", "sudo"))
    assert proc.returncode == 0, proc.stderr
    assert _programs(calls, "apt-get") == [("apt-get", argv) for argv in APT_CALLS]
    proc, calls = _run(tmp_path, "deps", uid=0, stubs=("id",))
    assert proc.returncode != 0 and f"missing Debian packages: {PACKAGE_LIST}" in proc.stderr


# A site's own sbatch (e.g. /opt/slurm/bin, not from a Debian package): it only has to exist.
SITE_SBATCH = 'print("sbatch: site build")'


def _stubs_with_sbatch(*names: str) -> dict[str, str]:
    return {**{n: BODIES[n] for n in names}, "sbatch": SITE_SBATCH}


def test_own_slurm_keeps_debian_slurm_out_but_installs_the_rest(tmp_path):
    """A cluster login node: sbatch on PATH, Debian's slurm-client not installed. The SLURM
    packages (slurm*, munge) are not installed over the site's; the others still are."""
    assert SLURM_PACKAGES and len(SLURM_PACKAGES) < len(PACKAGES), PACKAGES
    others = [p for p in PACKAGES if p not in SLURM_PACKAGES]
    stubs = _stubs_with_sbatch("id", "dpkg", "apt-get", "sudo")
    proc, calls = _run(tmp_path, "deps", uid=0, stubs=stubs)
    assert proc.returncode == 0, proc.stderr
    assert _programs(calls, "apt-get") == [("apt-get", argv) for argv in _apt_calls(others)]
    assert "this machine has its own SLURM" in proc.stdout
    assert f"not installing {' '.join(SLURM_PACKAGES)}" in proc.stdout
    assert _programs(calls, "sbatch") == []  # found on PATH, never run

    # Everything else installed: nothing runs at all.
    proc, calls = _run(tmp_path, "deps", uid=0, stubs=stubs, installed=" ".join(others))
    assert proc.returncode == 0, proc.stderr
    assert _programs(calls, "apt-get", "sudo") == []


def test_debian_slurm_on_path_is_not_a_site_slurm(tmp_path):
    """sbatch from Debian's slurm-client (a machine this bootstrap set up): the SLURM packages
    are checked and installed like every other one."""
    missing = [p for p in PACKAGES if p != "slurm-client"]
    stubs = _stubs_with_sbatch("id", "dpkg", "apt-get", "sudo")
    proc, calls = _run(tmp_path, "deps", uid=0, stubs=stubs, installed="slurm-client")
    assert proc.returncode == 0, proc.stderr
    assert "own SLURM" not in proc.stdout
    assert _programs(calls, "apt-get") == [("apt-get", argv) for argv in _apt_calls(missing)]


def test_own_slurm_without_dpkg_still_leaves_slurm_out(tmp_path):
    """No dpkg (not Debian) but a site sbatch: every non-SLURM package counts as missing."""
    others = [p for p in PACKAGES if p not in SLURM_PACKAGES]
    proc, calls = _run(tmp_path, "deps", uid=0, stubs=_stubs_with_sbatch("id", "apt-get"))
    assert proc.returncode == 0, proc.stderr
    assert _programs(calls, "apt-get") == [("apt-get", argv) for argv in _apt_calls(others)]
