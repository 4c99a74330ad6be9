#!/usr/bin/env bash
# Reproduce experiments/repdyn/results (van Rossem & Saxe's two-point theory, and our optimizers on the
# teleport task). About 22 minutes on 2 CPU cores; add --quick for the < 60 s smoke version.
set -euo pipefail
cd "$(dirname "$0")"
metatele repdyn --out results --json results/fits.json "$@"
