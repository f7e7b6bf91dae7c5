#!/usr/bin/env bash
# ImageNet ResNet-101, InfoPro+HPFF K=4 (90 epochs), DeepSpeed ZeRO on SLURM GPU nodes.
#
#   IMAGENET_SHARDS=/data/imagenet-wds sbatch slurm/imagenet_r101.sh
#   CONFIG=configs/imagenet/resnet101_k8_infopro_hpff.py ZERO=2 sbatch --nodes 4 slurm/imagenet_r101.sh
#
# One task per GPU; srun starts them and tools/train.py maps SLURM_PROCID/NTASKS/LOCALID to
# RANK/WORLD_SIZE/LOCAL_RANK, takes the first node of the job as master and derives the port
# from the job id (hpff_dist/engine/launchers.py). --resume auto continues from the newest
# intact checkpoint in the work dir (a first submission, with none yet, starts fresh), so a
# preempted or requeued job picks up where it stopped.
#SBATCH --job-name=hpff-r101-k4
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=10
#SBATCH --time=48:00:00
#SBATCH --requeue
#SBATCH --output=logs/%x-%j.out
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
mkdir -p logs

CONFIG=${CONFIG:-configs/imagenet/resnet101_k4_infopro_hpff.py}
WORK_DIR=${WORK_DIR:-work_dirs/$(basename "$CONFIG" .py)}
ZERO=${ZERO:-1}  # 0 or 1 for local learning unless optimizer state does not fit (docs/distributed.md)
: "${IMAGENET_SHARDS:?set IMAGENET_SHARDS to the output folder of tools/make_shards.py}"
export IMAGENET_SHARDS
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}

srun --kill-on-bad-exit=1 .venv/bin/python tools/train.py "$CONFIG" \
    --launcher slurm --work-dir "$WORK_DIR" --resume auto \
    --cfg-options strategy.zero_optimization.stage="$ZERO" strategy.bf16.enabled=True "$@"
