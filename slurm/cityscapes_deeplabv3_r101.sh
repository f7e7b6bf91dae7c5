#!/usr/bin/env bash
# Cityscapes DeepLabV3-R101-D8, InfoPro+HPFF K=4: mmseg's 4xb2 40k-iteration schedule (4 GPUs x
# 2 images, crop 512x1024), DeepSpeed ZeRO on one SLURM GPU node.
#
#   CITYSCAPES_ROOT=/data/cityscapes sbatch slurm/cityscapes_deeplabv3_r101.sh
#   CONFIG=configs/cityscapes/deeplabv3_r101_d8_e2e.py CITYSCAPES_ROOT=/data/cityscapes \
#       sbatch slurm/cityscapes_deeplabv3_r101.sh
#
# Submit from the repository root (the job runs in SLURM_SUBMIT_DIR), after `mkdir -p logs`
# (sbatch opens --output before the script runs). CITYSCAPES_ROOT is the folder holding
# leftImg8bit/ and gtFine/ with the trainIds made by `python tools/convert_cityscapes.py ROOT`;
# the configs read it from the environment (configs/_base_/datasets/cityscapes_folder.py).
# CITYSCAPES_SHARDS is passed on too, for a config that reads shards; one of the two is needed.
#
# One task per GPU; srun starts them and tools/train.py maps SLURM_PROCID/NTASKS/LOCALID to
# RANK/WORLD_SIZE/LOCAL_RANK, takes the first node of the job as master and derives the port
# from the job id (hpff_dist/engine/launchers.py). The config's batch (2) is per GPU: 4 GPUs
# make mmseg's batch 8, and more GPUs a larger one (the lr is not rescaled). Everything below
# can be changed without editing a copy: #SBATCH lines by sbatch options (they win), the rest by
# environment variables: CONFIG, WORK_DIR, ZERO (ZeRO stage), BF16 (True/False; mmseg trains
# fp32), CITYSCAPES_ROOT, CITYSCAPES_SHARDS, PYTHON, SRUN_ARGS, OMP_NUM_THREADS; arguments after
# the script go to tools/train.py (more --cfg-options key=value pairs first).
#
# Preemption and time limits lose nothing: 10 minutes before the time limit the batch shell
# gets SIGUSR1 (--signal=B:USR1@600) and forwards it to the tasks, as it forwards SIGTERM
# (preemption, scontrol requeue); the training checkpoints the iteration and exits 75, the job
# requeues itself (slurm/common.sh) and --resume auto continues from the newest intact
# checkpoint of the work dir at the next batch (ResumableIterBasedTrainLoop; a first
# submission, with no checkpoint yet, starts fresh).
#SBATCH --job-name=hpff-deeplabv3-k4
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=4
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --signal=B:USR1@600
#SBATCH --output=logs/%x-%j.out
#SBATCH --open-mode=append
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
# shellcheck source=slurm/common.sh
source slurm/common.sh

CONFIG=${CONFIG:-configs/cityscapes/deeplabv3_r101_d8_k4_infopro_hpff.py}
WORK_DIR=${WORK_DIR:-work_dirs/$(basename "$CONFIG" .py)}
ZERO=${ZERO:-1}  # 0 or 1 for local learning unless optimizer state does not fit (docs/distributed.md)
BF16=${BF16:-False}
if [ -z "${CITYSCAPES_ROOT:-}${CITYSCAPES_SHARDS:-}" ]; then
    echo "set CITYSCAPES_ROOT to the Cityscapes folder (leftImg8bit/, gtFine/ converted by" \
        "tools/convert_cityscapes.py), or CITYSCAPES_SHARDS for a config that reads shards" >&2
    exit 2
fi
[ -z "${CITYSCAPES_ROOT:-}" ] || export CITYSCAPES_ROOT
[ -z "${CITYSCAPES_SHARDS:-}" ] || export CITYSCAPES_SHARDS
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}

# shellcheck disable=SC2086  # SRUN_ARGS: options, split on purpose
run_tasks --kill-on-bad-exit=1 "$(srun_cpus)" ${SRUN_ARGS:-} \
    "${PYTHON:-.venv/bin/python}" -u tools/train.py "$CONFIG" \
    --launcher slurm --work-dir "$WORK_DIR" --resume auto \
    --cfg-options strategy.zero_optimization.stage="$ZERO" strategy.bf16.enabled="$BF16" "$@"
