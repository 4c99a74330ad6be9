#!/usr/bin/env bash
# Ablation of the long-horizon recipe (issue 14): lstm-update-tele trained at one budget (600 trajectories of
# 50..1000 steps, batch 32) with every lever in place, then with one lever removed at a time. Each variant is
# evaluated on 64 unseen tasks for 1000 steps (`metatele eval`). Two trainings run at once, one thread each.
# Usage: bash experiments/horizon/ablation.sh OUTDIR   (from the repository root)
set -euo pipefail
out=${1:-ablation}
cfg=experiments/pretrained-v2/lstm-update-tele.toml
common=(--config "$cfg" --set trajectories=600 --no-progress)
declare -A variants=(
  [recipe]=""
  [no-decay]="--set teleport_decay=0"
  [direct-update]="--set update_form=direct"
  [fixed-100-steps]="--set steps=100 --set min_steps=0"
  [no-loss-cap]="--set loss_cap=0"
  [raw-inputs]="--set preprocessing=raw"
)
train() {
  local name=$1
  # shellcheck disable=SC2086
  OMP_NUM_THREADS=1 metatele train "${common[@]}" ${variants[$name]} --out "$out/$name" --logdir "$out/runs/$name" \
    > "$out/$name.train.log" 2>&1 || echo "$name: training failed (see $out/$name.train.log)"
}
mkdir -p "$out"
names=(recipe no-decay direct-update fixed-100-steps no-loss-cap raw-inputs)
for ((i = 0; i < ${#names[@]}; i += 2)); do
  train "${names[i]}" &
  [ $((i + 1)) -lt ${#names[@]} ] && train "${names[i + 1]}" &
  wait
done
for name in "${names[@]}"; do
  [ -f "$out/$name/model.safetensors" ] || continue
  OMP_NUM_THREADS=2 metatele eval --checkpoint "$out/$name" --steps 1000 --tasks 64 --no-progress \
    --out "$out/eval/$name" --logdir "$out/eval-runs/$name" > "$out/$name.eval.log" 2>&1
  echo "== $name"; grep "^| lstm" "$out/eval/$name/results.md"
done
