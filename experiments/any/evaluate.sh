#!/usr/bin/env bash
# Size-agnostic learned optimizers (issue 17) on shapes and laws never seen in meta-training (which drew 1-3
# hidden layers of widths 8..32, laws paper and normal-init, 50..300 steps). Every learned method under CKPT
# that can run on the shape is compared with the tuned baselines on 64 unseen tasks.
# Usage: bash experiments/any/evaluate.sh OUTDIR [CKPT]   (from the repository root; CKPT defaults to checkpoints)
set -euo pipefail
out=${1:-any-eval}
ckpt=${2:-checkpoints}
cmp() {
  local name=$1; shift
  metatele compare --checkpoints "$ckpt" --tasks 64 --no-progress --out "$out/$name" --logdir "$out/runs/$name" "$@" \
    > "$out/$name.log" 2>&1
  echo "== $name"; grep "^| " "$out/$name/results.md" | cut -d'|' -f2-9
}
mkdir -p "$out"
cmp 20-20-20 --widths 20,20,20 --steps 300
cmp 10-10-10 --widths 10,10,10 --steps 300
cmp 64-64-64 --widths 64,64,64 --steps 300
cmp 20-32-32-20 --widths 20,32,32,20 --steps 300
cmp 30-60-10 --widths 30,60,10 --steps 300
cmp centred --widths 20,20,20 --law centred --steps 300
cmp teacher --widths 20,20,20 --law teacher --steps 300
cmp mnist5k --task classification --dataset mnist5k --widths 784,16,10,10 --steps 300
cmp 20-20-20-1000 --widths 20,20,20 --steps 1000
cmp 20-32-32-20-1000 --widths 20,32,32,20 --steps 1000
