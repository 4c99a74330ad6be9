"""Statistics in one place: summaries of per-task losses with confidence intervals that respect their scale,
divergence counts, the report's horizons, steps to reach a loss, Pearson/Spearman correlations with
percentile-bootstrap CIs, and Student-t intervals over a few runs that skip diverged ones (`mean_ci`). How
they are written is `metatele.reporting`'s business.

Losses span orders of magnitude and are positive, so intervals are computed on log10 loss (Student t) and
reported back on the loss scale as an interval for the geometric mean; the arithmetic mean gets a percentile
bootstrap interval. Neither can be negative.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["summarize", "summarize_steps", "t_interval", "mean_ci", "bootstrap_mean_ci", "divergence", "report_steps", "steps_to_reach",
           "CORRELATIONS", "correlation", "correlation_ci"]

BOOTSTRAP_RESAMPLES = 2000
CORRELATIONS = ("pearson", "spearman")


def t_interval(values: np.ndarray | Sequence[float], level: float = 0.95) -> tuple[Any, Any, Any]:
    """(mean, low, high): Student-t interval for the mean of `values` (NaN bounds for fewer than 2 values).

    1-D values give floats; values (n, ...) give arrays of shape values.shape[1:], one interval per column
    (e.g. per epoch over n seeds)."""
    from scipy.special import stdtrit  # the t quantile scipy.stats.t.ppf returns, without importing scipy.stats (1 s)

    v = np.asarray(values, dtype=float)
    if v.ndim <= 1:
        m = float(v.mean()) if v.size else math.nan
        if v.size < 2:
            return m, math.nan, math.nan
        half = float(stdtrit(v.size - 1, 0.5 + level / 2) * v.std(ddof=1) / math.sqrt(v.size))
        return m, m - half, m + half
    n = v.shape[0]
    m = v.mean(axis=0) if n else np.full(v.shape[1:], math.nan)
    if n < 2:
        return m, np.full_like(m, math.nan), np.full_like(m, math.nan)
    half = stdtrit(n - 1, 0.5 + level / 2) * v.std(axis=0, ddof=1) / math.sqrt(n)
    return m, m - half, m + half


def mean_ci(x: torch.Tensor | np.ndarray, level: float = 0.95) -> dict[str, np.ndarray]:
    """`t_interval` over the first axis of x (runs × …), separately for every other index, from the finite
    entries only (a run that diverged is counted, not averaged). Returns arrays of shape x.shape[1:]: mean,
    low, high, n (finite runs used) and n_nonfinite. With a handful of seeds the t quantile matters: 2.78 for
    n = 5 where the normal approximation would use 1.96."""
    a = x.double().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=float)
    cols = a.reshape(a.shape[0], -1)
    ok = np.isfinite(cols)
    stats = np.array([t_interval(c[f], level) for c, f in zip(cols.T, ok.T)]).reshape(*a.shape[1:], 3)
    n = ok.sum(0).reshape(a.shape[1:])
    return {"mean": stats[..., 0], "low": stats[..., 1], "high": stats[..., 2], "n": n, "n_nonfinite": a.shape[0] - n}


def bootstrap_mean_ci(values: np.ndarray | Sequence[float], level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval for the mean (deterministic given `seed`)."""
    v = np.asarray(values, dtype=float)
    if v.size < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(BOOTSTRAP_RESAMPLES, v.size))].mean(axis=1)
    lo, hi = np.quantile(means, [0.5 - level / 2, 0.5 + level / 2])
    return float(lo), float(hi)


def _pow10(x: float) -> float:
    """10**x, +inf where that overflows a float (a wide interval on log10 loss)."""
    try:
        return 10**x
    except OverflowError:
        return math.inf


def summarize(loss: torch.Tensor, intervals: bool = True) -> dict[str, float]:
    """Statistics of per-task losses (B,) over the finite tasks; non-finite tasks are counted, never averaged.

    Keys: n_tasks, n_nonfinite, loss_mean, loss_median, loss_q10, loss_q90, log10_loss_mean, geo_mean and, if
    `intervals`, geo_ci95_low/high (t-interval on log10 loss) and loss_ci95_low/high (bootstrap, mean).
    """
    finite = torch.isfinite(loss)
    L = loss[finite].double().cpu()
    out = {"n_tasks": float(loss.numel()), "n_nonfinite": float((~finite).sum())}
    keys = ("loss_mean", "loss_median", "loss_q10", "loss_q90", "log10_loss_mean", "geo_mean")
    if intervals:
        keys += ("geo_ci95_low", "geo_ci95_high", "loss_ci95_low", "loss_ci95_high")
    if L.numel() == 0:
        return {**out, **{k: math.nan for k in keys}}
    q = torch.quantile(L, torch.tensor([0.1, 0.5, 0.9], dtype=L.dtype))
    logs = L.clamp_min(1e-300).log10()
    out.update(loss_mean=float(L.mean()), loss_median=float(q[1]), loss_q10=float(q[0]), loss_q90=float(q[2]),
               log10_loss_mean=float(logs.mean()), geo_mean=10 ** float(logs.mean()))
    if intervals:
        _, lo, hi = t_interval(logs.numpy())
        out.update(geo_ci95_low=_pow10(lo), geo_ci95_high=_pow10(hi))
        out["loss_ci95_low"], out["loss_ci95_high"] = bootstrap_mean_ci(L.numpy())
    return out


STEP_KEYS = ("loss_mean", "loss_median", "loss_q10", "loss_q90", "log10_loss_mean")


def summarize_steps(loss: torch.Tensor) -> dict[str, np.ndarray]:
    """`summarize(loss[s], intervals=False)`'s STEP_KEYS for every step s of loss (steps+1, B) at once, each an
    array (steps+1,) of the same values: the steps where every task is finite in a few batched ops (the same to
    the bit: tests/test_statistics.py), the others through `summarize`."""
    L = loss.double().cpu()
    q = torch.quantile(L, torch.tensor([0.1, 0.5, 0.9], dtype=L.dtype), dim=1)
    cols = (L.mean(1), q[1], q[0], q[2], L.clamp_min(1e-300).log10().mean(1))
    out = {k: v.numpy().copy() for k, v in zip(STEP_KEYS, cols)}
    for s in (~torch.isfinite(L).all(1)).nonzero().flatten().tolist():
        st = summarize(loss[s], intervals=False)
        for k in STEP_KEYS:
            out[k][s] = st[k]
    return out


def divergence(loss: torch.Tensor) -> dict[str, float]:
    """Per-task failure counts of a run, loss (steps+1, B): `n_diverged` tasks whose final loss is non-finite
    or above their initial loss; `n_blowup` tasks whose final loss exceeds 10× their best loss so far."""
    final, first = loss[-1], loss[0]
    best = torch.where(torch.isfinite(loss), loss, torch.full_like(loss, math.inf)).amin(0)
    diverged = ~torch.isfinite(final) | (final > first)
    blowup = ~torch.isfinite(final) | (final > 10 * best)
    return {"n_diverged": float(diverged.sum()), "n_blowup": float(blowup.sum())}


def report_steps(last: int) -> list[int]:
    """1, 10, 30, 100, 300, 1000, 3000, … up to `last`, plus `last`."""
    steps, p = [1], 10
    while p <= last:
        steps += [s for s in (p, 3 * p) if s <= last]
        p *= 10
    return sorted({s for s in steps if s <= last} | {last})


def steps_to_reach(loss: torch.Tensor, factor: float) -> float:
    """Median over tasks of the first step with loss ≤ factor·loss[0]; inf where a task never gets there.
    loss: (steps+1, B)."""
    ok = (loss <= factor * loss[0:1]) & torch.isfinite(loss)
    idx = torch.where(ok.any(0), ok.float().argmax(0).double(), torch.tensor(math.inf, dtype=torch.float64))
    return float(idx.median())


def _rowwise_pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of each row pair of x, y (R, n) → (R,); nan where a row is constant."""
    xc = x - x.mean(axis=-1, keepdims=True)
    yc = y - y.mean(axis=-1, keepdims=True)
    den = np.sqrt((xc * xc).sum(-1) * (yc * yc).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (xc * yc).sum(-1) / np.where(den > 0, den, 1.0), np.nan)


def _rowwise(x: np.ndarray, y: np.ndarray, method: str) -> np.ndarray:
    if method == "pearson":
        return _rowwise_pearson(x, y)
    if method == "spearman":  # Pearson of the ranks; ties (bootstrap duplicates) get their average rank
        from scipy.stats import rankdata

        return _rowwise_pearson(rankdata(x, axis=-1), rankdata(y, axis=-1))
    raise ValueError(f"unknown correlation {method!r}; choose one of {', '.join(CORRELATIONS)}")


def correlation(x: Sequence[float], y: Sequence[float], method: str = "pearson") -> float:
    """Pearson or Spearman correlation of two samples of equal length."""
    return float(_rowwise(np.asarray(x, float)[None], np.asarray(y, float)[None], method)[0])


def correlation_ci(x: Sequence[float], y: Sequence[float], method: str = "pearson", *, n_boot: int = 10000,
                   level: float = 0.95, seed: int = 0) -> dict[str, float]:
    """The correlation r and its percentile-bootstrap CI (pairs resampled with replacement, `n_boot` times,
    from a seeded generator): {"r", "lo", "hi", "n"}. Resamples with a constant side are dropped."""
    xa, ya = np.asarray(x, float), np.asarray(y, float)
    if xa.shape != ya.shape or xa.ndim != 1 or xa.size < 3:
        raise ValueError(f"need two 1-D samples of equal length ≥ 3, got shapes {xa.shape} and {ya.shape}")
    idx = np.random.default_rng(seed).integers(0, xa.size, size=(n_boot, xa.size))
    boot = _rowwise(xa[idx], ya[idx], method)
    boot = boot[np.isfinite(boot)]
    a = (1 - level) / 2
    lo, hi = np.quantile(boot, [a, 1 - a])
    return {"r": correlation(xa, ya, method), "lo": float(lo), "hi": float(hi), "n": float(xa.size)}
