#!/usr/bin/env bash
# Reproduce experiments/generalization/results* (paper §5: sharpness/curvature vs generalization, teleporting for it).
# CPU, single-threaded (metatele generalization's default --threads 1); measured times are in README.md.
# Pass --quick for the < 60 s smoke version of each run (it writes the same files, with tiny sizes).
set -euo pipefail
cd "$(dirname "$0")"
# 1. the paper's protocol (40 epochs) on mnist5k and digits: 2 × 50 correlation runs, 10 teleport seeds
metatele generalization --out results --logdir ../../runs/generalization "$@"
# 2. digits is far from converged after 40 epochs of 71 steps: the same study after 200 epochs
metatele generalization --dataset digits --epochs 200 --teleport-epoch 100 --out results-digits200 \
    --logdir ../../runs/generalization-digits200 "$@"
# 3. the teleport experiment on another seed split (seeds 101·54321 … 110·54321)
metatele generalization --part teleport --seed-offset 100 --out results-seeds2 \
    --logdir ../../runs/generalization-seeds2 "$@"
