#!/usr/bin/env bash
# Reproduce experiments/optimizers/results: the paper's §5 experiment (standard optimizers ± teleport) on
# MNIST-5k, the single-teleport probe and the keep-vs-reset table. It used 21 CPU-minutes (50 minutes of wall-clock)
# on a 2-core machine shared with other jobs (load 7-10); less on an idle one.
# Pass --overwrite to replace the committed results.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=experiments/optimizers/results
mkdir -p "$out"
peak() { python -c 'import sys; sys.path.insert(0, "benchmarks"); from meta_train_throughput import sgemm_peak; print(f"{sgemm_peak():.1f}")'; }
{
  echo "torch $(python -c 'import torch; print(torch.__version__)'), $(nproc) cores, OMP_NUM_THREADS=1"
  echo "sgemm peak before: $(OMP_NUM_THREADS=2 peak) GFLOP/s (2 threads)"
  echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
} > "$out/machine.txt"
OMP_NUM_THREADS=1 /usr/bin/time -f "metatele optimizers: %e s wall, %U s user, %S s system" \
  metatele optimizers --out "$out" --logdir runs/optimizers --no-progress "$@" > "$out/stdout.txt" 2>> "$out/machine.txt"
OMP_NUM_THREADS=1 python experiments/optimizers/probe_teleport.py > "$out/probe.md"
python experiments/optimizers/keep_vs_reset.py "$out" > "$out/keep_vs_reset.md"
{
  echo "sgemm peak after: $(OMP_NUM_THREADS=2 peak) GFLOP/s (2 threads)"
  echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
} >> "$out/machine.txt"
rm "$out/stdout.txt"  # the same text as summary.md
cat "$out/machine.txt"
