#!/usr/bin/env bash
# Issue 29 (round 3): reproduce every table of docs/results.md's "Round 3" section.
#  1. meta-train (2,000 trajectories each, round 2's recipe and budget, two trainings at a time, one thread each):
#     the shipped lstm-update and lstm-lr-tele (experiments/pretrained/: + progress features + the paper/normal-init
#     law mixture), and four lstm-update-tele ablation cells: progress only, mixture only, both, both with the gate
#     closed at the start (experiments/progress/*.toml). The fifth cell, neither lever, is round 2's lstm-update-tele,
#     from which the shipped one (round 3b) is fine-tuned by experiments/progress/finetune.sh.
#  2. `metatele compare` at --steps 100 and 1000 on the paper's law (every shipped method), and on the held-out laws
#     centred and teacher at --steps 100 and 300 (the three shipped LSTMs; the tele cells "both" and "mixture only" in
#     place of the shipped lstm-update-tele; round 2's three);
#  3. the ablation (evaluate.py ablation) and the 10×-horizon runs (evaluate.py long).
# Usage: bash experiments/progress/reproduce.sh OUT [--skip-training]   (from the repository root; with
# --skip-training the shipped checkpoints are used and the ablation cells are read from OUT/train)
set -euo pipefail
out=${1:-progress}
mkdir -p "$out/train"
train() {  # NAME CONFIG
  OMP_NUM_THREADS=1 metatele train --config "$2" --out "$out/train/$1" --logdir "$out/runs/train-$1" --no-progress \
    > "$out/train/$1.log" 2>&1
}
if [ "${2:-}" != "--skip-training" ]; then
  (train lstm-update experiments/pretrained/lstm-update.toml
   train progress-only experiments/progress/progress-only.toml
   train both experiments/progress/both.toml) &
  (train lstm-lr-tele experiments/pretrained/lstm-lr-tele.toml
   train mixture-only experiments/progress/mixture-only.toml
   train gate-closed experiments/progress/gate-closed.toml) &
  wait
fi
# every shipped method, with the newly trained lstm-update and lstm-lr-tele
mkdir -p "$out/all"
cp -r checkpoints/. "$out/all/"
if [ "${2:-}" != "--skip-training" ]; then
  for m in lstm-update lstm-lr-tele; do cp "$out/train/$m/model.safetensors" "$out/all/$m/"; done
fi
for steps in 100 1000; do
  metatele compare --checkpoints "$out/all" --tasks 64 --steps "$steps" --first-seed 7777000000 --no-progress \
    --out "$out/compare-paper-$steps" --logdir "$out/runs/compare-paper-$steps"
done
for set in shipped both mixture-only round2; do
  mkdir -p "$out/lstm-$set"
  for m in lstm-update lstm-lr-tele lstm-update-tele; do
    mkdir -p "$out/lstm-$set/$m" && cp "$out/all/$m/model.safetensors" "$out/lstm-$set/$m/"
    [ "$set" = round2 ] && git show "d2a3e1c:checkpoints/$m/model.safetensors" > "$out/lstm-$set/$m/model.safetensors"
  done
  case $set in both | mixture-only) cp "$out/train/$set/model.safetensors" "$out/lstm-$set/lstm-update-tele/" ;; esac
  for law in centred teacher; do
    for steps in 100 300; do
      metatele compare --checkpoints "$out/lstm-$set" --law "$law" --tasks 64 --steps "$steps" \
        --first-seed 7777000000 --no-progress --out "$out/compare-$set-$law-$steps" --logdir "$out/runs/$set-$law-$steps"
    done
  done
done
mkdir -p "$out/round2-lstm-update"
git show "d2a3e1c:checkpoints/lstm-update/model.safetensors" > "$out/round2-lstm-update/model.safetensors"
python experiments/progress/evaluate.py ablation "$out" "neither (round 2, shipped)=$out/all/lstm-update-tele" \
  "progress only=$out/train/progress-only" "mixture only=$out/train/mixture-only" "both=$out/train/both" \
  "both, gate closed at start=$out/train/gate-closed" "lstm-update (round 2)=$out/round2-lstm-update" \
  "lstm-update (round 3, shipped)=$out/all/lstm-update"
python experiments/progress/evaluate.py long "$out" "lstm-update-tele=$out/all/lstm-update-tele" \
  "lstm-update=$out/all/lstm-update" "lstm-lr-tele=$out/all/lstm-lr-tele" \
  "both (not shipped)=$out/train/both" "mixture only (not shipped)=$out/train/mixture-only"
