#!/usr/bin/env bash
# Evaluate a checkpoint on SLURM, mmseg/mmpretrain style:
#
#   [GPUS=8] [GPUS_PER_NODE=8] [CPUS_PER_TASK=5] [SRUN_ARGS=...] [SBATCH_ARGS=...] \
#       slurm/test.sh PARTITION JOB_NAME CONFIG CHECKPOINT [tools/test.py args]
#
# Like slurm/train.sh: run on a login node it submits itself with sbatch; in the batch job
# srun starts GPUS tasks of `tools/test.py CONFIG CHECKPOINT --launcher slurm ARGS`
# (a preempted evaluation is simply requeued by SLURM and runs again from the start).
# Environment: slurm/common.sh, plus SRUN_ARGS, PYTHON (default .venv/bin/python),
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
submit_unless_batch "${BASH_SOURCE[0]}" 4 \
    "slurm/test.sh PARTITION JOB_NAME CONFIG CHECKPOINT [tools/test.py args]" "$@"
config=$3
checkpoint=$4
shift 4
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
# shellcheck disable=SC2086  # SRUN_ARGS: options, split on purpose
run_tasks --kill-on-bad-exit=1 "$(srun_cpus)" ${SRUN_ARGS:-} \
    "${PYTHON:-.venv/bin/python}" -u tools/test.py "$config" "$checkpoint" --launcher slurm "$@"
