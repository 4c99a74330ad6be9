#!/usr/bin/env bash
# Issue 29, round 3b: reproduce the shipped lstm-update-tele (round 2's, warm-started with progress features and
# fine-tuned on 100-step trajectories) and every table of docs/results.md's "Round 3b" section.
#  1. round 2's checkpoint from git (commit d2a3e1c; or retrain it: metatele train --config
#     experiments/pretrained-v2/lstm-update-tele.toml), then two fine-tunings from it, two at a time, one thread each:
#     the shipped recipe (experiments/pretrained/lstm-update-tele.toml, T = 100) and the ablation cell with T in
#     50..1000 (experiments/progress/finetune-a.toml);
#  2. `metatele compare` at --steps 100 and 1000 on the paper's law (every shipped method, the new lstm-update-tele),
#     and on the held-out laws centred and teacher at --steps 100 and 300;
#  3. evaluate.py ablation (round 2 / both fine-tunings) and long (10x T).
# Usage: bash experiments/progress/finetune.sh OUT   (from the repository root)
set -euo pipefail
out=${1:-finetune}
mkdir -p "$out/round2/lstm-update-tele" "$out/train"
git show "d2a3e1c:checkpoints/lstm-update-tele/model.safetensors" > "$out/round2/lstm-update-tele/model.safetensors"
train() {  # NAME CONFIG
  OMP_NUM_THREADS=1 metatele train --config "$2" --set "init=$out/round2/lstm-update-tele" --out "$out/train/$1" \
    --logdir "$out/runs/train-$1" --no-progress > "$out/train/$1.log" 2>&1
}
train lstm-update-tele experiments/pretrained/lstm-update-tele.toml &
train finetune-a experiments/progress/finetune-a.toml &
wait
mkdir -p "$out/all" "$out/tele/lstm-update-tele"
cp -r checkpoints/. "$out/all/"
cp "$out/train/lstm-update-tele/model.safetensors" "$out/all/lstm-update-tele/"
cp "$out/train/lstm-update-tele/model.safetensors" "$out/tele/lstm-update-tele/"
for steps in 100 1000; do
  metatele compare --checkpoints "$out/all" --tasks 64 --steps "$steps" --first-seed 7777000000 --no-progress \
    --out "$out/compare-paper-$steps" --logdir "$out/runs/compare-paper-$steps"
done
for law in centred teacher; do
  for steps in 100 300; do
    metatele compare --checkpoints "$out/tele" --law "$law" --tasks 64 --steps "$steps" --first-seed 7777000000 \
      --no-progress --out "$out/compare-ft-$law-$steps" --logdir "$out/runs/ft-$law-$steps"
  done
done
python experiments/progress/evaluate.py ablation "$out" "round 2 (shipped before)=$out/round2/lstm-update-tele" \
  "fine-tuned on T 100 (shipped)=$out/train/lstm-update-tele" "fine-tuned on T 50..1000=$out/train/finetune-a"
python experiments/progress/evaluate.py long "$out" "lstm-update-tele (fine-tuned)=$out/train/lstm-update-tele"
