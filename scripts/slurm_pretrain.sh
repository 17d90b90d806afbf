#!/usr/bin/env bash
# Multi-node DetCon pretraining under SLURM: one torchrun launcher per node, G GPUs per node.
#
#   sbatch --nodes=4 scripts/slurm_pretrain.sh --config detcon_b_imagenet_300ep \
#          --data /datasets/imagenet/train --masks /datasets/imagenet_fh_cache
#
# Every argument is passed to `detcon pretrain`. The run resumes automatically from
# RUN_DIR/last.pt (train.resume=auto), so a requeued job continues where it stopped: SLURM
# sends SIGTERM before the time limit (--signal below); detcon saves a checkpoint and exits.
#SBATCH --job-name=detcon
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=80
#SBATCH --time=24:00:00
#SBATCH --signal=TERM@300
#SBATCH --requeue
#SBATCH --output=slurm-%x-%j.out
set -euo pipefail

GPUS_PER_NODE=${GPUS_PER_NODE:-8}
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MASTER_PORT=${MASTER_PORT:-29500}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}

# `srun` starts one torchrun per node; torchrun starts GPUS_PER_NODE workers and sets RANK,
# LOCAL_RANK, WORLD_SIZE for detcon.distributed.init_from_env (NCCL backend on GPUs).
# `exec` lets SIGTERM reach torchrun, which forwards it to the workers.
exec srun --kill-on-bad-exit=1 torchrun \
    --nnodes="$SLURM_JOB_NUM_NODES" \
    --nproc_per_node="$GPUS_PER_NODE" \
    --rdzv_id="$SLURM_JOB_ID" \
    --rdzv_backend=c10d \
    --rdzv_endpoint="$MASTER_ADDR:$MASTER_PORT" \
    -m detcon pretrain "$@" train.resume=auto
