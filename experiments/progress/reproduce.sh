#!/usr/bin/env bash
# Issue 29 (round 3): reproduce every table of docs/results.md's "horizon-aware" section.
#  1. meta-train the three shipped LSTMs with the round-3 recipe (experiments/pretrained/*.toml: round 2's recipe
#     plus progress features and the paper/normal-init law mixture) and the two ablation cells
#     (experiments/progress/{progress-only,mixture-only}.toml); the fourth cell, neither lever, is round 2's shipped
#     lstm-update-tele (same recipe and budget), taken from git history. Two trainings at a time, one thread each.
#  2. `metatele compare` at --steps 100 and 1000 on the paper's law (every shipped method), and on the held-out laws
#     centred and teacher at --steps 100 and 300 (the three LSTMs and the tuned baselines);
#  3. the ablation (evaluate.py ablation) and the 10×-horizon runs (evaluate.py long).
# Usage: bash experiments/progress/reproduce.sh OUT [--skip-training]   (from the repository root; with
# --skip-training the shipped checkpoints are compared and the ablation cells are read from OUT/train)
set -euo pipefail
out=${1:-progress}
mkdir -p "$out/train" "$out/lstm"
train() {  # NAME CONFIG
  OMP_NUM_THREADS=1 metatele train --config "$2" --out "$out/train/$1" --logdir "$out/runs/train-$1" --no-progress \
    > "$out/train/$1.log" 2>&1
}
if [ "${2:-}" != "--skip-training" ]; then
  (train lstm-update-tele experiments/pretrained/lstm-update-tele.toml
   train mixture-only experiments/progress/mixture-only.toml) &
  (train lstm-update experiments/pretrained/lstm-update.toml
   train lstm-lr-tele experiments/pretrained/lstm-lr-tele.toml
   train progress-only experiments/progress/progress-only.toml) &
  wait
  ckpt="$out/train"
else
  ckpt=checkpoints
fi
mkdir -p "$out/round2" "$out/all"
cp -r checkpoints/. "$out/all/"  # every shipped method, with the three LSTMs from $ckpt
git show "d2a3e1c:checkpoints/lstm-update-tele/model.safetensors" > "$out/round2/model.safetensors"
for m in lstm-update-tele lstm-update lstm-lr-tele; do
  mkdir -p "$out/lstm/$m" && cp "$ckpt/$m/model.safetensors" "$out/lstm/$m/" && cp "$ckpt/$m/model.safetensors" "$out/all/$m/"
done
for steps in 100 1000; do
  metatele compare --checkpoints "$out/all" --tasks 64 --steps "$steps" --first-seed 7777000000 --no-progress \
    --out "$out/compare-paper-$steps" --logdir "$out/runs/compare-paper-$steps"
done
for law in centred teacher; do
  for steps in 100 300; do
    metatele compare --checkpoints "$out/lstm" --law "$law" --tasks 64 --steps "$steps" --first-seed 7777000000 \
      --no-progress --out "$out/compare-$law-$steps" --logdir "$out/runs/compare-$law-$steps"
  done
done
python experiments/progress/evaluate.py ablation "$out" "neither (round 2)=$out/round2" \
  "progress only=$out/train/progress-only" "mixture only=$out/train/mixture-only" "both (shipped)=$ckpt/lstm-update-tele"
python experiments/progress/evaluate.py long "$out" "lstm-update-tele=$ckpt/lstm-update-tele" \
  "lstm-update=$ckpt/lstm-update" "lstm-lr-tele=$ckpt/lstm-lr-tele"
