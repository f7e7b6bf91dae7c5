#!/usr/bin/env bash
# Bootstrap a machine for hpff-dist: the Debian packages of requirements-debian.txt, then the
# virtual environment (pinned requirements, package installed editable).
#
#   tools/bootstrap.sh [debian|venv|all]      (default: all; `make train`/`make test` call it)
#
# Debian packages: each one not installed (dpkg status "install ok installed") is installed
# with `apt-get install -y` and DEBIAN_FRONTEND=noninteractive: directly as root, through sudo
# otherwise. Without apt-get (or without root and sudo) it stops and names the packages to
# install by hand. On a machine with its own SLURM (a cluster login node: `sbatch` on PATH while
# Debian's slurm-client is not installed) the SLURM packages of the list (slurm*, munge) are
# left out, so the site's SLURM and munge are never shadowed or reconfigured; the others are
# still installed. The venv is keyed on a hash of requirements.txt + requirements.lock, the
# editable install on a hash of pyproject.toml: a second run installs nothing.
#
# Environment: PYTHON (interpreter for the venv, default python3.11), VENV (default .venv),
# DEBIAN_PACKAGES_FILE (default requirements-debian.txt), VENV_MIN_FREE_GIB (free space a new
# venv needs, default 8; 0: no check).
set -euo pipefail

script=${BASH_SOURCE[0]}
[[ $script == */* ]] || script=./$script
cd "${script%/*}/.." # the repository root (no dirname: only bash builtins before the work)
PYTHON=${PYTHON:-python3.11}
VENV=${VENV:-.venv}
DEBIAN_PACKAGES_FILE=${DEBIAN_PACKAGES_FILE:-requirements-debian.txt}

say() { printf 'bootstrap: %s\n' "$*"; }
fail() {
    printf 'bootstrap: error: %s\n' "$*" >&2
    exit 1
}

# Package names of the list file: comments (#) and blank lines dropped.
debian_packages() {
    sed -e 's/#.*//' "$DEBIAN_PACKAGES_FILE" | tr -s ' \t' '\n\n' | sed -e '/^$/d'
}

# True when dpkg knows the package as installed (a removed package whose configuration files
# remain is "deinstall ok config-files": not installed).
is_installed() {
    # grep reads all of dpkg's output (no -q): an early exit would SIGPIPE dpkg under pipefail.
    dpkg -s "$1" 2>/dev/null | grep -x 'Status: install ok installed' >/dev/null
}

# Packages that make up SLURM (and its authentication): left out where the site has its own.
is_slurm_package() {
    case "$1" in
    slurm* | munge | libmunge* | libpmi*slurm*) return 0 ;;
    *) return 1 ;;
    esac
}

# True on a machine whose SLURM does not come from Debian's packages: sbatch on PATH while
# slurm-client (which ships Debian's sbatch) is not installed, e.g. a site build in /opt.
has_own_slurm() {
    command -v sbatch >/dev/null 2>&1 || return 1
    ! { command -v dpkg >/dev/null 2>&1 && is_installed slurm-client; }
}

# Run "VAR=value... command args" as root: directly when we are root, else through sudo.
as_root() {
    if [ "$(id -u)" = 0 ]; then
        env "$@"
    else
        sudo "$@"
    fi
}

install_debian_packages() {
    local missing=() skipped=() pkg own_slurm=0
    [ -f "$DEBIAN_PACKAGES_FILE" ] || fail "package list $DEBIAN_PACKAGES_FILE not found"
    if has_own_slurm; then own_slurm=1; fi
    while read -r pkg; do
        if [ $own_slurm = 1 ] && is_slurm_package "$pkg"; then
            skipped+=("$pkg")
        # Not a Debian system (no dpkg): nothing can be checked, every package counts as missing.
        elif ! command -v dpkg >/dev/null 2>&1 || ! is_installed "$pkg"; then
            missing+=("$pkg")
        fi
    done < <(debian_packages)
    if [ ${#skipped[@]} -gt 0 ]; then
        say "this machine has its own SLURM ($(command -v sbatch), not Debian's slurm-client): not installing ${skipped[*]}"
    fi
    [ ${#missing[@]} -gt 0 ] || return 0

    local hand="install them by hand (Debian/Ubuntu, as root: apt-get install -y ${missing[*]}) and run this again"
    if ! command -v apt-get >/dev/null 2>&1; then
        fail "missing Debian packages: ${missing[*]}; this machine has no apt-get, so $hand"
    fi
    if [ "$(id -u)" != 0 ] && ! command -v sudo >/dev/null 2>&1; then
        fail "missing Debian packages: ${missing[*]}; not root and no sudo, so $hand"
    fi
    say "installing Debian packages: ${missing[*]}"
    as_root DEBIAN_FRONTEND=noninteractive apt-get update -qq ||
        fail "apt-get update failed; $hand"
    as_root DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" || fail "apt-get install ${missing[*]} failed; $hand"
}

hash_of() { cat "$@" | sha256sum | cut -c1-16; }

# A new venv takes about 7 GiB (torch with its CUDA libraries, triton, DeepSpeed, DALI); pip
# running out of space half-way leaves a broken venv and an OSError far from the cause, so the
# free space is checked first. VENV_MIN_FREE_GIB (default 8) sets the bar, 0 turns it off.
check_free_space() {
    local need_gib=${VENV_MIN_FREE_GIB:-8} where avail_kib
    where=.
    [[ $VENV != */* ]] || where=${VENV%/*}
    [ -n "$where" ] || where=/
    command -v df >/dev/null 2>&1 || return 0
    avail_kib=$(df -Pk "$where" | { read -r _ && read -r _ _ _ a _ && printf '%s' "$a"; }) || return 0
    [[ $avail_kib =~ ^[0-9]+$ ]] || return 0
    if ((avail_kib < need_gib * 1024 * 1024)); then
        fail "only $((avail_kib / 1024 / 1024)) GiB free where $VENV goes ($where); the venv needs about 7 GiB (torch with its CUDA libraries, DeepSpeed, DALI). Free some space, or set VENV=/a/path/with/room (VENV_MIN_FREE_GIB=N changes this check, 0 turns it off)"
    fi
}

build_venv() {
    export DS_BUILD_OPS=0 # DeepSpeed: no C++/CUDA op builds at install time
    local stamp pkg_stamp
    stamp="$VENV/.installed-$(hash_of requirements.txt requirements.lock)"
    pkg_stamp="$VENV/.package-$(hash_of pyproject.toml)"
    if [ ! -f "$stamp" ]; then
        command -v "$PYTHON" >/dev/null 2>&1 ||
            fail "$PYTHON not found; install Python 3.11 or set PYTHON=/path/to/python3.11"
        check_free_space
        say "building $VENV for ${stamp##*/}"
        rm -rf "$VENV"
        "$PYTHON" -m venv "$VENV"
        # torch first: deepspeed's setup imports it, and pip must take the wheels on local disk.
        "$VENV/bin/pip" install -q torch==2.14.1 torchvision==0.29.1
        "$VENV/bin/pip" install -q -r requirements.lock -r requirements.txt
        touch "$stamp"
    fi
    # The editable install is cheap: redone when pyproject.toml changes, venv kept.
    if [ ! -f "$pkg_stamp" ]; then
        rm -f "$VENV"/.package-*
        "$VENV/bin/pip" install -q --no-deps --no-build-isolation -e . \
            --config-settings editable_mode=compat
        touch "$pkg_stamp"
    fi
}

case "${1:-all}" in
debian) install_debian_packages ;;
venv) build_venv ;;
all)
    install_debian_packages
    build_venv
    ;;
*) fail "usage: tools/bootstrap.sh [debian|venv|all], got '$1'" ;;
esac
