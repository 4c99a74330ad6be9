"""Issue 29's ablation and long-run tables: lstm-update-tele with and without progress features and the law
mixture, on 64 unseen 20-20-20 tasks (seeds from 7777000000) of the paper's law and of normal-init, for runs of
T = 100 and T = 1000 steps (a horizon-aware method is told T); and every given checkpoint run for 10× its stated T.

Usage (from the repository root; reproduce.sh calls it):
    python experiments/progress/evaluate.py ablation OUT NAME=DIR [NAME=DIR ...]
    python experiments/progress/evaluate.py long OUT NAME=DIR [NAME=DIR ...]
DIR holds model.safetensors. Writes OUT/<part>.csv and OUT/<part>.md.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from metatele import checkpoints
from metatele.evaluation.stats import summarize
from metatele.io import atomic_write_csv, atomic_write_text
from metatele.methods import set_horizon
from metatele.step import rollout
from metatele.tasks.regression import LAWS, RegressionFamily

FIRST_SEED, TASKS = 7777000000, 64
STEPS = {100: (1, 10, 30, 100), 1000: (1, 10, 30, 100, 300, 1000)}


def cell(loss: torch.Tensor) -> str:
    s = summarize(loss)
    bad = int(s["n_nonfinite"])
    return f"{s['geo_mean']:.3g} [{s['geo_ci95_low']:.3g}, {s['geo_ci95_high']:.3g}]" + (f" ({bad} non-finite)" if bad else "")


def ablation(out: Path, models: dict[str, Path]) -> None:
    rows, md = [], []
    for law in ("paper", "normal-init"):
        task = RegressionFamily((20, 20, 20), 20, LAWS[law]).sample(range(FIRST_SEED, FIRST_SEED + TASKS))
        for T, report in STEPS.items():
            md += [f"\n**{law}, runs of T = {T} steps** (geometric mean over {TASKS} tasks [95% CI])\n",
                   "| model | " + " | ".join(f"@ {s}" for s in report) + " | above initial |",
                   "|---|" + "---|" * (len(report) + 1)]
            for name, path in models.items():
                model = checkpoints.load_model(Path(path) / checkpoints.MODEL_FILE)
                t0 = time.perf_counter()
                loss = rollout(model, task, T).loss
                above = int((loss[-1].nan_to_num(float("inf")) > loss[0]).sum())
                md.append(f"| {name} | " + " | ".join(cell(loss[s]) for s in report) + f" | {above}/{TASKS} |")
                for s in report:
                    rows.append({"law": law, "T": T, "model": name, "step": s, **summarize(loss[s]),
                                 "above_initial": above, "seconds": time.perf_counter() - t0})
                print(md[-1], flush=True)
    atomic_write_csv(out / "ablation.csv", rows)
    atomic_write_text(out / "ablation.md", "\n".join(md) + "\n")


def long(out: Path, models: dict[str, Path]) -> None:
    """Each model told T and run for 10·T steps (T pinned: it is not told the longer length)."""
    task = RegressionFamily((20, 20, 20), 20).sample(range(FIRST_SEED, FIRST_SEED + TASKS))
    rows, md = [], ["| model | T | @ T | @ 10·T | worst ratio @10T/@T | non-finite | final above initial | "
                    "any step above initial |", "|---|---|---|---|---|---|---|---|"]
    for name, path in models.items():
        for T in (100, 1000):
            model = checkpoints.load_model(Path(path) / checkpoints.MODEL_FILE)
            set_horizon(model, T)
            model.clock.pinned = True
            loss = rollout(model, task, 10 * T).loss
            finite = torch.isfinite(loss).all(0)
            ratio = (loss[10 * T] / loss[T]).nan_to_num(float("inf"))
            row = {"model": name, "T": T, "at_T": summarize(loss[T])["geo_mean"],
                   "at_10T": summarize(loss[10 * T])["geo_mean"], "worst_ratio": float(ratio.max()),
                   "nonfinite": int((~finite).sum()), "final_above_initial": int((loss[-1] > loss[0]).sum()),
                   "any_above_initial": int((loss.nan_to_num(float("inf")).amax(0) > loss[0]).sum())}
            rows.append(row)
            md.append(f"| {name} | {T} | {row['at_T']:.3g} | {row['at_10T']:.3g} | {row['worst_ratio']:.3g} | "
                      f"{row['nonfinite']}/{TASKS} | {row['final_above_initial']}/{TASKS} | {row['any_above_initial']}/{TASKS} |")
            print(md[-1], flush=True)
    atomic_write_csv(out / "long.csv", rows)
    atomic_write_text(out / "long.md", "\n".join(md) + "\n")


if __name__ == "__main__":
    torch.set_num_threads(1)
    part, out, pairs = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
    out.mkdir(parents=True, exist_ok=True)
    models = dict(p.split("=", 1) for p in pairs)
    {"ablation": ablation, "long": long}[part](out, models)
