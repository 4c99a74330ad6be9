"""Part (a), correlation: train many SGD runs, measure sharpness and orbit curvature at their final weights,
and correlate the measures with the validation loss and the generalization gap (run → rows)."""
from __future__ import annotations

import math
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from metatele.evaluation.stats import CORRELATIONS, correlation_ci
from metatele.studies.generalization.plan import MEASURES, PAPER_SIGN, TARGETS, Plan
from metatele.studies.generalization.run import log, measure_batches, network, setup, split_metrics, train
from metatele.tasks.seeds import study_seeds
from metatele.teleport.measures import PAPER_RADII, curvature, sharpness

__all__ = ["run_measures", "correlation_study", "correlation_table"]

SHARP_SEED, PAPER_SEED, CURV_SEED = 1, 2, 3  # direction draws (shared by all runs)


def run_measures(model: nn.Sequential, batches: list[tuple[torch.Tensor, torch.Tensor]], plan: Plan) -> dict[str, float]:
    """phi, phi_paper, psi and psi_exact of one float64 network (module docstring)."""
    with torch.no_grad():
        base = float(torch.stack([F.cross_entropy(model(X), y) for X, y in batches]).mean())
        phi = sharpness(model, F.cross_entropy, batches, PAPER_RADII, plan.sharp_dirs, SHARP_SEED)
        paper = sharpness(model, F.cross_entropy, batches, PAPER_RADII, plan.paper_dirs, PAPER_SEED, dist="uniform")
        psi = [curvature(model, X, plan.curv_dirs, CURV_SEED + i) for i, (X, _) in enumerate(batches)]
        psi_x = [curvature(model, X[: plan.exact_batch], plan.curv_dirs, CURV_SEED + i) for i, (X, _) in enumerate(batches)]
    return {"phi": float(phi), "phi_paper": float(paper) + base, "psi": float(torch.stack(psi).mean()),
            "psi_exact": float(torch.stack(psi_x).mean())}


def correlation_study(dataset: str, plan: Plan, device: str, seed_offset: int = 0, progress: bool = True
                      ) -> tuple[list[dict[str, Any]],
                                                                                             list[dict[str, Any]]]:
    """Train plan.runs × plan.seed_sets SGD runs and correlate their measures with generalization.
    Returns (per-run rows, correlation table rows)."""
    seeds = study_seeds(plan.runs * plan.seed_sets, seed_offset)
    data, task, spe = setup(dataset, seeds, device)
    t0 = time.perf_counter()
    W = train(task, task.init_weights(), range(plan.epochs), spe)
    log(f"[{dataset}] correlation: {len(seeds)} SGD runs × {plan.epochs} epochs in {time.perf_counter() - t0:.0f} s",
        progress)
    act = task.activation
    tr_loss, _ = split_metrics(W, data.X_train.to(device), data.y_train.to(device), act)
    va_loss, va_acc = split_metrics(W, data.X_val.to(device), data.y_val.to(device), act)
    batches = measure_batches(data, plan, device)
    t0 = time.perf_counter()
    rows = []
    for b, seed in enumerate(seeds):
        row: dict[str, Any] = {"dataset": dataset, "set": chr(ord("A") + b // plan.runs), "seed": seed,
                               "train_loss": float(tr_loss[b]), "val_loss": float(va_loss[b]),
                               "val_acc": float(va_acc[b]), "gap": float(va_loss[b] - tr_loss[b])}
        finite = all(bool(torch.isfinite(w[b]).all()) for w in W) and math.isfinite(row["val_loss"])
        row.update(run_measures(network(W, b, torch.float64), batches, plan) if finite
                   else {m: math.nan for m in MEASURES})
        rows.append(row)
    log(f"[{dataset}] correlation: measures of {len(seeds)} runs in {time.perf_counter() - t0:.0f} s", progress)
    return rows, correlation_table(rows, plan)


def correlation_table(rows: list[dict[str, Any]], plan: Plan) -> list[dict[str, Any]]:
    """Pearson and Spearman of each measure with each target, per seed set and pooled (runs with a non-finite
    value are left out and counted)."""
    sets = sorted({r["set"] for r in rows})
    groups = [(s, [r for r in rows if r["set"] == s]) for s in sets] + ([("+".join(sets), rows)] if len(sets) > 1 else [])
    table = []
    for name, rs in groups:
        for m in MEASURES:
            for target in TARGETS:
                ok = [r for r in rs if math.isfinite(r[m]) and math.isfinite(r[target])]
                out: dict[str, Any] = {"set": name, "measure": m, "target": target, "paper_sign": PAPER_SIGN[m],
                                       "n": len(ok), "n_excluded": len(rs) - len(ok)}
                for method in CORRELATIONS:
                    c = correlation_ci([r[m] for r in ok], [r[target] for r in ok], method, n_boot=plan.n_boot)
                    out.update({method: c["r"], f"{method}_lo": c["lo"], f"{method}_hi": c["hi"]})
                table.append(out)
    return table
