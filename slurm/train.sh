#!/usr/bin/env bash
# Train on SLURM, mmseg/mmpretrain style:
#
#   [GPUS=16] [GPUS_PER_NODE=8] [CPUS_PER_TASK=5] [SRUN_ARGS=...] [SBATCH_ARGS=...] \
#       slurm/train.sh PARTITION JOB_NAME CONFIG [WORK_DIR] [tools/train.py args]
#
# Run on a login node, it submits itself with sbatch and prints sbatch's answer (mmseg's
# slurm_train.sh runs srun in the foreground instead, but a foreground srun cannot be
# requeued). In the batch job, srun starts GPUS tasks, one per GPU, each running
# `tools/train.py CONFIG --launcher slurm --work-dir WORK_DIR --resume auto ARGS`; the
# launcher maps SLURM_PROCID/NTASKS/LOCALID to RANK/WORLD_SIZE/LOCAL_RANK, takes the first node
# as master and derives the port from the job id (docs/distributed.md, SLURM).
#
# WORK_DIR defaults to work_dirs/<config name>. The job is requeueable and gets SIGUSR1
# SIGNAL_SECONDS before its time limit: the training checkpoints the iteration, exits 75 and
# the job requeues itself and resumes there (slurm/common.sh). Environment: see
# slurm/common.sh (GPUS, GPUS_PER_NODE, CPUS_PER_TASK, GRES, SIGNAL_SECONDS, LOG_DIR,
# SBATCH_ARGS), plus SRUN_ARGS (extra srun options), PYTHON (default .venv/bin/python),
# OMP_NUM_THREADS (default 4).
set -euo pipefail

# The batch job runs sbatch's copy of this script, in the repository root (submit_self's
# --chdir): common.sh is found from there; on the login node, next to this script.
if [ -n "${HPFF_SLURM_BATCH:-}" ]; then
    source slurm/common.sh
else
    # shellcheck source=slurm/common.sh
    source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
fi
submit_unless_batch "${BASH_SOURCE[0]}" 3 \
    "slurm/train.sh PARTITION JOB_NAME CONFIG [WORK_DIR] [tools/train.py args]" "$@"
config=$3
shift 3
work_dir=work_dirs/$(basename "$config" .py)
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
    work_dir=$1
    shift
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
# shellcheck disable=SC2086  # SRUN_ARGS: options, split on purpose
run_tasks --kill-on-bad-exit=1 "$(srun_cpus)" ${SRUN_ARGS:-} \
    "${PYTHON:-.venv/bin/python}" -u tools/train.py "$config" --launcher slurm \
    --work-dir "$work_dir" --resume auto "$@"
