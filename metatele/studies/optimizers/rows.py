"""The optimizers study's rows: statistics over seeds per epoch, paired differences to no teleport (at equal
epochs and at equal time), every run's curves, and what the teleports did."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from metatele.evaluation.stats import mean_ci
from metatele.studies.optimizers.run import RunResult, StudyResult
from metatele.tasks.seeds import study_seeds

__all__ = ["METRICS", "stack", "at_times", "report_epochs", "curve_rows", "difference_rows", "seed_rows",
           "teleport_log_rows", "teleport_rows"]

METRICS = ("train_loss", "val_loss", "val_acc")


def stack(runs: list[RunResult], metric: str) -> torch.Tensor:
    return torch.from_numpy(np.stack([getattr(r, metric) for r in runs]))


def at_times(runs: list[RunResult], metric: str, times: np.ndarray) -> torch.Tensor:
    """Each run's metric at the given times (seeds × points), linearly interpolated on its (seconds, metric)
    curve and held after its end; NaN after a divergence. times: (points,) or (seeds, points)."""
    t = np.broadcast_to(times, (len(runs), times.shape[-1]))
    out = []
    for r, tt in zip(runs, t):
        ok = np.isfinite(r.seconds) & np.isfinite(getattr(r, metric))
        out.append(np.interp(tt, r.seconds[ok], getattr(r, metric)[ok], right=np.nan if r.diverged else None)
                   if ok.sum() > 1 else np.full_like(tt, np.nan))
    return torch.from_numpy(np.stack(out))


def report_epochs(epochs: int) -> list[int]:
    """The epochs the tables show: 1, 3 (the first after the epoch-2 teleports), a quarter of the run, the last."""
    return sorted({e for e in (1, 3, round(epochs / 4), epochs) if 1 <= e <= epochs})


def curve_rows(res: StudyResult) -> list[dict[str, Any]]:
    """results.csv: mean and 95% CI over seeds per (optimizer, arm, epoch)."""
    rows = []
    for (opt, arm), runs in res.runs.items():
        stats = {m: mean_ci(stack(runs, m)) for m in (*METRICS, "seconds")}
        for e in range(res.cfg.epochs + 1):
            row: dict[str, Any] = {"dataset": res.cfg.dataset, "optimizer": opt, "lr": res.lrs[opt], "arm": arm,
                                   "epoch": e}
            for m, st in stats.items():
                row.update({f"{m}_mean": float(st["mean"][e]), f"{m}_ci95_low": float(st["low"][e]),
                            f"{m}_ci95_high": float(st["high"][e])})
            row["n_seeds"], row["n_diverged"] = int(st["n"][e]), int(stats["train_loss"]["n_nonfinite"][e])
            rows.append(row)
    return rows


def difference_rows(res: StudyResult) -> list[dict[str, Any]]:
    """Paired (same seed) differences arm − none, at equal epochs and at equal wall-clock (the arm's value
    at the seconds the seed's 'none' run had reached at that epoch), with 95% CIs."""
    rows = []
    for (opt, arm), runs in res.runs.items():
        if arm == "none":
            continue
        base = res.runs[opt, "none"]
        t_base = np.stack([r.seconds for r in base])
        for e in report_epochs(res.cfg.epochs):
            for m in METRICS:
                b = stack(base, m)[:, e]
                for basis, v in (("epoch", stack(runs, m)[:, e]), ("time", at_times(runs, m, t_base[:, e:e + 1])[:, 0])):
                    st = mean_ci(v - b)
                    rows.append({"optimizer": opt, "arm": arm, "epoch": e, "basis": basis, "metric": m,
                                 "diff_mean": float(st["mean"]), "diff_ci95_low": float(st["low"]),
                                 "diff_ci95_high": float(st["high"]), "n_seeds": int(st["n"])})
    return rows


def seed_rows(res: StudyResult) -> list[dict[str, Any]]:
    """runs.csv: every run's curves, one row per (optimizer, arm, seed, epoch)."""
    return [{"optimizer": opt, "arm": arm, "seed": seed, "epoch": e, "seconds": r.seconds[e],
             "wall_seconds": r.wall_seconds[e], "train_loss": r.train_loss[e], "val_loss": r.val_loss[e],
             "val_acc": r.val_acc[e]}
            for (opt, arm), runs in res.runs.items() for seed, r in zip(study_seeds(res.cfg.seeds), runs)
            for e in range(res.cfg.epochs + 1)]


def teleport_log_rows(res: StudyResult) -> list[dict[str, Any]]:
    """teleport_log.csv: every teleport of every run."""
    return [{"optimizer": opt, "arm": arm, "seed": seed, "teleport": i, "applied": t.applied, "n_samples": t.n_samples,
             "magnitude": sum(m * m for m in t.magnitude) ** 0.5, "halvings": t.halvings,
             "loss_before": t.loss_before, "loss_after": t.loss_after, "grad_norm_sq_before": t.grad_norm_sq_before,
             "grad_norm_sq_after": t.grad_norm_sq_after, "wall_seconds": t.seconds}
            for (opt, arm), runs in res.runs.items() for seed, r in zip(study_seeds(res.cfg.seeds), runs)
            for i, t in enumerate(r.teleports)]


def teleport_rows(res: StudyResult) -> list[dict[str, Any]]:
    """Per (optimizer, arm) with teleports: what the teleports did and what they cost."""
    rows = []
    for (opt, arm), runs in res.runs.items():
        tele = [t for r in runs for t in r.teleports]
        if not tele:
            continue
        applied = [t for t in tele if t.applied]
        total = np.array([r.seconds[np.isfinite(r.seconds)][-1] for r in runs])
        spent = np.array([r.teleport_seconds for r in runs])
        rows.append({
            "optimizer": opt, "arm": arm, "teleports": len(tele), "applied": len(applied),
            "n_samples": tele[0].n_samples,
            "magnitude_mean": float(np.mean([sum(m ** 2 for m in t.magnitude) ** 0.5 for t in applied])) if applied else 0.0,
            "grad_norm_sq_gain_median": float(np.median([t.gain for t in applied])) if applied else 1.0,
            "drift_max": max(t.drift for t in tele),
            "ms_per_teleport": 1e3 * float(spent.sum()) / len(tele),
            # share of the training time, over the runs that trained to the end
            "overhead_pct": 100.0 * float(np.mean([sp / tt for sp, tt, r in zip(spent, total, runs) if not r.diverged]))
            if not all(r.diverged for r in runs) else math.nan,
        })
    return rows
