"""Redraw the two figures of a `metatele optimizers` run from its runs.csv and tuning.csv, without training.

    python experiments/optimizers/redraw.py experiments/optimizers/results

Used once for the committed results: the first figures of that run coloured the arms by their position in
each panel, so an arm's colour changed where an arm that always diverged was left out of the time plot;
`plot` now gives every arm one colour. The curves are read back exactly as the run wrote them.
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

from metatele.io import atomic_write_bytes
from metatele.studies.optimizers import ARMS, OPTIMIZERS, RunResult, StudyConfig, StudyResult, plot


def load(out: Path) -> StudyResult:
    with open(out / "runs.csv") as f:
        rows = list(csv.DictReader(f))
    with open(out / "tuning.csv") as f:
        tuning = list(csv.DictReader(f))
    num = lambda v: float(v) if v != "" else np.nan  # noqa: E731  (empty cells are non-finite values)
    keys = list(dict.fromkeys((r["optimizer"], r["arm"]) for r in rows))
    epochs = max(int(r["epoch"]) for r in rows)
    seeds = sorted({int(r["seed"]) for r in rows})
    runs = {}
    for opt, arm in keys:
        runs[opt, arm] = []
        for seed in seeds:
            mine = sorted((r for r in rows if (r["optimizer"], r["arm"], int(r["seed"])) == (opt, arm, seed)),
                          key=lambda r: int(r["epoch"]))
            col = lambda k: np.array([num(r[k]) for r in mine])  # noqa: E731
            runs[opt, arm].append(RunResult(col("train_loss"), col("val_loss"), col("val_acc"), col("seconds"),
                                            col("wall_seconds")))
    opts = tuple(o for o in OPTIMIZERS if any(k[0] == o for k in keys))
    arms = tuple(a for a in ARMS if any(k[1] == a for k in keys))
    # the figures name the dataset in their title; summary.md's first line names it too
    dataset = (out / "summary.md").read_text().splitlines()[0].rsplit(": ", 1)[1]
    cfg = StudyConfig(dataset=dataset, optimizers=opts, arms=arms, epochs=epochs, seeds=len(seeds))
    lrs = {r["optimizer"]: float(r["lr"]) for r in tuning if r["chosen"] == "True"}
    return StudyResult(cfg, lrs, [], runs, 0.0)


if __name__ == "__main__":
    out = Path(sys.argv[1])
    res = load(out)
    atomic_write_bytes(out / "curves_epoch.png", plot(res, "epoch"))
    atomic_write_bytes(out / "curves_time.png", plot(res, "time"))
    print(f"redrew {out}/curves_epoch.png and {out}/curves_time.png")
