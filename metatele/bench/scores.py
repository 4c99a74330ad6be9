"""The suite's statistics, as the field reports them.

Per problem and method, over the report seeds:
- geometric-mean final loss with a 95% CI (`metatele.evaluation.stats.summarize`);
- the fraction of runs whose final loss is below tuned Adam's on the same seed (a non-finite run never wins);
- the speedup over tuned Adam (learned_optimization's normaliser): the number of tuned-Adam steps needed to reach
  the method's final loss on the same seed, divided by the horizon. Adam runs SPEEDUP_FACTOR × the horizon, so a
  speedup above that is censored (reported as the factor, flagged); a non-finite run has speedup 0.
Across problems: the interquartile mean (IQM) of the per-run scores with a stratified bootstrap CI (runs resampled
within each problem), as rliable does; scores are the speedup and log10(L_adam / L_method).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from metatele.bench.run import SPEEDUP_FACTOR, ProblemRun
from metatele.evaluation.stats import BOOTSTRAP_RESAMPLES, summarize, t_interval

__all__ = ["speedups", "beats", "log_ratio", "iqm", "iqm_ci", "problem_rows", "aggregate_rows", "paired_rows",
           "long_run_counts"]


def speedups(adam: torch.Tensor, final: torch.Tensor, horizon: int) -> torch.Tensor:
    """Per run: (first step at which Adam's loss ≤ final) / horizon; SPEEDUP_FACTOR when Adam never gets there in
    its longer run; 0 for a non-finite final. adam (K·horizon+1, S), final (S,) → (S,)."""
    reach = (adam <= final[None]) & torch.isfinite(adam)
    first = torch.where(reach.any(0), reach.float().argmax(0).double(), torch.tensor(math.inf, dtype=torch.float64))
    out = (first / horizon).clamp(max=SPEEDUP_FACTOR)
    return torch.where(torch.isfinite(final), out, torch.zeros_like(out))


def beats(final: torch.Tensor, adam_final: torch.Tensor) -> torch.Tensor:
    """(S,) bool: the run ended below tuned Adam's run on the same seed."""
    return torch.isfinite(final) & (~torch.isfinite(adam_final) | (final < adam_final))


def log_ratio(final: torch.Tensor, adam_final: torch.Tensor, cap: float = 10.0) -> torch.Tensor:
    """(S,) log10(L_adam / L_method), clipped to ±cap; a non-finite run scores −cap."""
    r = adam_final.double().clamp_min(1e-300).log10() - final.double().clamp_min(1e-300).log10()
    return torch.where(torch.isfinite(final), r.nan_to_num(cap), torch.full_like(r, -cap)).clamp(-cap, cap)


def iqm(values: np.ndarray) -> float:
    """Interquartile mean: the mean of the middle 50%."""
    from scipy.stats import trim_mean  # scipy.stats takes 1–2 s to import: not on every `metatele` command's path

    return float(trim_mean(np.asarray(values, float), 0.25))


def iqm_ci(per_problem: Sequence[np.ndarray], level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """(IQM, low, high) over all runs of all problems; the CI is a stratified percentile bootstrap (runs resampled
    with replacement within each problem, BOOTSTRAP_RESAMPLES times, seeded)."""
    rng = np.random.default_rng(seed)
    arrays = [np.asarray(a, float) for a in per_problem if len(a)]
    point = iqm(np.concatenate(arrays))
    boots = [iqm(np.concatenate([a[rng.integers(0, a.size, a.size)] for a in arrays]))
             for _ in range(BOOTSTRAP_RESAMPLES)]
    lo, hi = np.quantile(boots, [0.5 - level / 2, 0.5 + level / 2])
    return point, float(lo), float(hi)


def _diverged(loss: torch.Tensor) -> torch.Tensor:
    """(S,) runs whose loss became non-finite or ended above the initial loss."""
    return ~torch.isfinite(loss).all(0) | (loss[-1] > loss[0])


def problem_rows(run: ProblemRun) -> list[dict[str, Any]]:
    """One row per method of one problem (see the module docstring)."""
    T = run.problem.steps
    adam = run.trajectories["adam"].loss
    adam_final = adam[T]
    rows = []
    for name, traj in run.trajectories.items():
        loss = traj.loss[: T + 1]
        final = loss[-1]
        sp = speedups(adam, final, T)
        s = summarize(final)
        rows.append({
            "problem": run.problem.name, "split": run.problem.split, "method": name, "steps": T,
            "lr": run.lrs.get(name, math.nan), "geo_mean": s["geo_mean"], "geo_ci95_low": s["geo_ci95_low"],
            "geo_ci95_high": s["geo_ci95_high"], "n_runs": int(final.numel()), "n_nonfinite": int(s["n_nonfinite"]),
            "n_diverged": int(_diverged(loss).sum()), "frac_beats_adam": float(beats(final, adam_final).double().mean()),
            "speedup_median": float(sp.median()), "speedup_censored": int((sp >= SPEEDUP_FACTOR).sum()),
            "log_ratio_median": float(log_ratio(final, adam_final).median()),
            "sec_per_step": float(traj.seconds[T] / T) if traj.seconds.numel() > T else math.nan,
            "_speedups": sp.numpy(), "_log_ratio": log_ratio(final, adam_final).numpy(),
            "_beats": beats(final, adam_final).numpy()})
    return rows


def aggregate_rows(rows: list[dict[str, Any]], split: str) -> list[dict[str, Any]]:
    """Per method, over the problems of `split`: IQM [CI] of speedup and of log10(L_adam/L), the fraction of runs
    beating Adam, the median speedup over runs, and runs diverged."""
    out = []
    chosen = [r for r in rows if r["split"] == split]
    for method in dict.fromkeys(r["method"] for r in chosen):
        mine = [r for r in chosen if r["method"] == method]
        sp = [r["_speedups"] for r in mine]
        lr_ = [r["_log_ratio"] for r in mine]
        s, s_lo, s_hi = iqm_ci(sp)
        q, q_lo, q_hi = iqm_ci(lr_)
        runs = np.concatenate([r["_beats"] for r in mine])
        out.append({"split": split, "method": method, "problems": len(mine), "runs": int(runs.size),
                    "iqm_speedup": s, "iqm_speedup_low": s_lo, "iqm_speedup_high": s_hi,
                    "median_speedup": float(np.median(np.concatenate(sp))),
                    "iqm_log_ratio": q, "iqm_log_ratio_low": q_lo, "iqm_log_ratio_high": q_hi,
                    "frac_beats_adam": float(runs.mean()), "n_diverged": sum(r["n_diverged"] for r in mine)})
    return out


def paired_rows(runs: Sequence[ProblemRun], method: str, twin: str) -> list[dict[str, Any]]:
    """`method` against `twin` on the same seeds, per problem: the mean of log10(L_twin / L_method) at the horizon
    (`log_ratio`: > 0 where the method ends lower) with its 95% t-interval over seeds, the fraction of runs the method
    ends lower, and the verdict: "method" or "twin" where the interval excludes 0, else "unresolved"."""
    rows = []
    for run in runs:
        T = run.problem.steps
        a, b = run.trajectories[method].loss[T], run.trajectories[twin].loss[T]
        mean, lo, hi = t_interval(log_ratio(a, b).numpy())
        rows.append({"problem": run.problem.name, "split": run.problem.split, "method": method, "twin": twin,
                     "mean_log10_ratio": mean, "ci95_low": lo, "ci95_high": hi,
                     "frac_method_lower": float(beats(a, b).double().mean()),
                     "verdict": method if lo > 0 else twin if hi < 0 else "unresolved"})
    return rows


def long_run_counts(loss: torch.Tensor) -> dict[str, Any]:
    """The never-diverges criterion on a long run, loss (steps+1, S): runs that are non-finite, that end above
    their initial loss, that rise above it at any step; the final loss's geometric mean (NaN if a run is
    non-finite, 0 if a run reached exactly 0)."""
    finite = torch.isfinite(loss).all(0)
    return {"runs": loss.shape[1], "nonfinite": int((~finite).sum()),
            "final_above_initial": int((loss[-1] > loss[0]).sum()),
            "any_step_above_initial": int((loss.nan_to_num(math.inf).amax(0) > loss[0]).sum()),
            "final_geo_mean": 10 ** float(loss[-1].log10().mean()) if bool(finite.all()) else math.nan}
