"""Which way should a learned optimizer's rescaling teleport go? The untrained rule (Adam at the shipped nominal lr
10^-1.5) with the positive-rescaling teleport fully open (gate sigmoid(6) ≈ 1), ascending or descending ‖∇L‖²,
at several sizes per step, against no teleport, on the suite's meta-training and validation problems (never the
held-out ones), 4 selection seeds each → experiments/bench/rescale_probe.csv (mean log10 final loss).

    PYTHONPATH=. OMP_NUM_THREADS=1 python experiments/bench/rescale_probe.py

`GatedRescale` descends; the ascent rows flip its direction (`rescale_direction` negated) for this measurement only.
"""
from __future__ import annotations

from pathlib import Path

import torch

import metatele.learned.adafac as adafac
from metatele.bench.metatrain import validation_runs
from metatele.bench.problems import SUITE
from metatele.io import atomic_write_csv
from metatele.learned import build
from metatele.learned.adafac import AdafacSpec

NOMINAL = 10 ** -1.5
torch.set_num_threads(1)
torch.manual_seed(0)  # the gate's initial head (its output is ≈ 6 + a small random term)
problems = [p for p in SUITE if p.split in ("train", "validation")]
steepest = adafac.rescale_direction
rows = []
for direction, magnitude in (("none", 0.0), ("descent", 0.01), ("descent", 0.05), ("ascent", 0.01), ("ascent", 0.05)):
    if direction == "none":
        method = build(AdafacSpec("adafac", nominal_lr=NOMINAL, mix=0))
    else:
        method = build(AdafacSpec("adafac-tele", nominal_lr=NOMINAL, mix=0, group="diag", gate_bias=6.0,
                                  magnitude=magnitude))
    adafac.rescale_direction = steepest if direction != "ascent" else (lambda g: [-d for d in steepest(g)])
    runs = validation_runs(method, problems, 4)
    for p, loss in zip(problems, runs):
        final = loss[-1].double()
        rows.append({"direction": direction, "magnitude": magnitude, "problem": p.name, "split": p.split,
                     "mean_log10_final": float(final.log10().mean()) if bool(torch.isfinite(final).all()) else "nan"})
        print(rows[-1], flush=True)
adafac.rescale_direction = steepest
atomic_write_csv(Path(__file__).resolve().parent / "rescale_probe.csv", rows)
