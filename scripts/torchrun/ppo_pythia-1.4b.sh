#!/bin/bash
# PPO-ptx at Pythia-1.4B with torchrun on NNODES nodes x NPROC GPUs, DeepSpeed ZeRO-3 (docs/multinode.md).
# Run the same command on every node, from the repository root (each node's torchrun joins the rendezvous at HEAD):
#   NNODES=2 NPROC=8 HEAD=node0.example:29500 bash scripts/torchrun/ppo_pythia-1.4b.sh
# One machine: NNODES=1 NPROC=8 HEAD=localhost:29500 bash scripts/torchrun/ppo_pythia-1.4b.sh
# Extra arguments go to lit-instruct fit (e.g. --ckpt_path runs/ppo-pythia-1.4b/checkpoints/last.ckpt: a resume on
# any NNODES x NPROC continues the prompt and ptx streams).
set -euo pipefail
NNODES=${NNODES:-2}
NPROC=${NPROC:-8}
HEAD=${HEAD:?set HEAD=host:port of the first node}
RUN_ID=${RUN_ID:-ppo-pythia-1.4b}
EPISODES_PER_ITERATION=${EPISODES_PER_ITERATION:-512}
PROCESSES=$((NNODES * NPROC))
if (( EPISODES_PER_ITERATION % PROCESSES )); then
  echo "EPISODES_PER_ITERATION=$EPISODES_PER_ITERATION does not split over $PROCESSES processes" >&2; exit 2
fi

torchrun --nnodes "$NNODES" --nproc-per-node "$NPROC" \
  --rdzv-backend c10d --rdzv-endpoint "$HEAD" --rdzv-id "$RUN_ID" \
  -m lit_instruct fit \
  --config configs/ppo/pythia-1.4b.yaml --config configs/trainer/gpu_zero3_multinode.yaml \
  --trainer.num_nodes "$NNODES" --trainer.devices "$NPROC" \
  --data.rollout_batch_size $((EPISODES_PER_ITERATION / PROCESSES)) \
  "$@"
