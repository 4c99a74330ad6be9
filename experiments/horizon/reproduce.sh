#!/usr/bin/env bash
# Reproduce round 2's results (issue 14; now the history row of docs/results.md): retrain the three shipped checkpoints with the long-horizon
# recipe (2000 trajectories each; 24-39 min each on the 2-core machine, run three at a time), then compare them, and
# the round-1 checkpoints, with the tuned baselines on 64 unseen tasks for 1000 steps, on the paper's law and on
# the unseen normal-init law. The ablation table is experiments/horizon/ablation.sh.
# Usage: bash experiments/horizon/reproduce.sh OUTDIR [--skip-training]   (from the repository root)
set -euo pipefail
out=${1:-horizon}
mkdir -p "$out"
if [ "${2:-}" != "--skip-training" ]; then
  for m in lstm-update-tele lstm-update lstm-lr-tele; do
    OMP_NUM_THREADS=1 metatele train --config "experiments/pretrained-v2/$m.toml" --out "$out/checkpoints/$m" \
      --logdir "$out/runs/train-$m" --no-progress > "$out/train-$m.log" 2>&1 &
  done
  wait
  ckpt="$out/checkpoints"
else  # the round-2 checkpoints, from git history (round 3 replaced the shipped ones)
  ckpt="$out/v2"
  for m in lstm-update-tele lstm-update lstm-lr-tele; do
    mkdir -p "$ckpt/$m"
    git show "d2a3e1c:checkpoints/$m/model.safetensors" > "$ckpt/$m/model.safetensors"
  done
fi
# the round-1 checkpoints, from git history
mkdir -p "$out/v1"
for m in lstm-update-tele lstm-update lstm-lr-tele; do
  mkdir -p "$out/v1/$m"
  git show "54840b9~1:checkpoints/$m/model.safetensors" > "$out/v1/$m/model.safetensors"
done
for law in paper normal-init; do
  metatele compare --checkpoints "$ckpt" --law "$law" --tasks 64 --steps 1000 --first-seed 7777000000 --no-progress \
    --out "$out/compare-$law" --logdir "$out/runs/compare-$law"
  metatele compare --checkpoints "$out/v1" --law "$law" --tasks 64 --steps 1000 --first-seed 7777000000 --no-progress \
    --out "$out/v1-compare-$law" --logdir "$out/runs/v1-compare-$law"
done
