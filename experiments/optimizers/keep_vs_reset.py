"""Optimizer state after a teleport, kept or reset: paired (same seed) differences keep − reset, from the
runs.csv of a `metatele optimizers` run, at epochs 1, 3, 10 and the last.

    python experiments/optimizers/keep_vs_reset.py experiments/optimizers/results > experiments/optimizers/results/keep_vs_reset.md
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

from metatele.evaluation.stats import mean_ci
from metatele.studies.optimizers import OPTIMIZERS, report_epochs

PAIRS = (("teleport", "teleport-reset"), ("teleport-layer1", "teleport-layer1-reset"))


def main(out: Path) -> None:
    with open(out / "runs.csv") as f:
        rows = list(csv.DictReader(f))
    value = {(r["optimizer"], r["arm"], r["seed"], int(r["epoch"])): float(r["train_loss"]) if r["train_loss"] else np.nan
             for r in rows}
    seeds = sorted({r["seed"] for r in rows})
    epochs = report_epochs(max(int(r["epoch"]) for r in rows))
    print("Training loss, keep − reset (paired by seed; mean [95% CI], n = seeds where both runs are finite; "
          "negative = keeping the state is better).\n")
    print("| optimizer | arms | " + " | ".join(f"epoch {e}" for e in epochs) + " |")
    print("|---|---|" + "---|" * len(epochs))
    for opt in OPTIMIZERS:
        for keep, reset in PAIRS:
            cells = []
            for e in epochs:
                d = np.array([value[opt, keep, s, e] - value[opt, reset, s, e] for s in seeds])
                st = mean_ci(d)
                cells.append("—" if st["n"] == 0 else
                             f"{float(st['mean']):+.3g} [{float(st['low']):+.3g}, {float(st['high']):+.3g}] (n={st['n']})")
            print(f"| {opt} | {keep} − {reset} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
