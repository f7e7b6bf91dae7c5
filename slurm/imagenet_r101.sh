#!/usr/bin/env bash
# ImageNet ResNet-101, InfoPro+HPFF K=4 (90 epochs), DeepSpeed ZeRO on SLURM GPU nodes.
#
#   IMAGENET_SHARDS=/data/imagenet-wds sbatch slurm/imagenet_r101.sh
#   CONFIG=configs/imagenet/resnet101_k8_infopro_hpff.py ZERO=2 sbatch --nodes 4 slurm/imagenet_r101.sh
#
# Submit from the repository root (the job runs in SLURM_SUBMIT_DIR), after `mkdir -p logs`
# (sbatch opens --output before the script runs). One task per GPU; srun starts them and
# tools/train.py maps SLURM_PROCID/NTASKS/LOCALID to RANK/WORLD_SIZE/LOCAL_RANK, takes the
# first node of the job as master and derives the port from the job id
# (hpff_dist/engine/launchers.py). Everything below can be changed without editing a copy:
# #SBATCH lines by sbatch options (they win), the rest by environment variables: CONFIG,
# WORK_DIR, ZERO (ZeRO stage), BF16 (True/False), IMAGENET_SHARDS, PYTHON, SRUN_ARGS,
# OMP_NUM_THREADS; arguments after the script go to tools/train.py (more --cfg-options
# key=value pairs first). E.g. on CPU nodes: sbatch --gpus-per-node=0 --ntasks-per-node=2 ...
#
# Preemption and time limits lose nothing: 10 minutes before the time limit the batch shell
# gets SIGUSR1 (--signal=B:USR1@600) and forwards it to the tasks, as it forwards SIGTERM
# (preemption, scontrol requeue); the training checkpoints the iteration and exits 75, the job
# requeues itself (slurm/common.sh) and --resume auto continues from the newest intact
# checkpoint of the work dir (a first submission, with none yet, starts fresh).
#SBATCH --job-name=hpff-r101-k4
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=10
#SBATCH --time=48:00:00
#SBATCH --requeue
#SBATCH --signal=B:USR1@600
#SBATCH --output=logs/%x-%j.out
#SBATCH --open-mode=append
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
# shellcheck source=slurm/common.sh
source slurm/common.sh

CONFIG=${CONFIG:-configs/imagenet/resnet101_k4_infopro_hpff.py}
WORK_DIR=${WORK_DIR:-work_dirs/$(basename "$CONFIG" .py)}
ZERO=${ZERO:-1}  # 0 or 1 for local learning unless optimizer state does not fit (docs/distributed.md)
BF16=${BF16:-True}
: "${IMAGENET_SHARDS:?set IMAGENET_SHARDS to the output folder of tools/make_shards.py}"
export IMAGENET_SHARDS
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}

# shellcheck disable=SC2086  # SRUN_ARGS: options, split on purpose
run_tasks --kill-on-bad-exit=1 "$(srun_cpus)" ${SRUN_ARGS:-} \
    "${PYTHON:-.venv/bin/python}" -u tools/train.py "$CONFIG" \
    --launcher slurm --work-dir "$WORK_DIR" --resume auto \
    --cfg-options strategy.zero_optimization.stage="$ZERO" strategy.bf16.enabled="$BF16" "$@"
