"""Statistics in one place: summaries of per-task losses, steps to reach a loss, Pearson/Spearman correlations
with percentile-bootstrap CIs, Student-t CIs of a mean, and the number format of every table."""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["summarize", "steps_to_reach", "fmt", "CORRELATIONS", "correlation", "correlation_ci", "t_interval"]

CORRELATIONS = ("pearson", "spearman")


def summarize(loss: torch.Tensor) -> dict[str, float]:
    """Statistics of per-task losses (B,) over the finite tasks; diverged tasks are counted, not averaged."""
    finite = torch.isfinite(loss)
    L = loss[finite].double().cpu()
    n = int(L.numel())
    out = {"n_tasks": float(loss.numel()), "n_diverged": float((~finite).sum())}
    if n == 0:
        nan = math.nan
        return {**out, "loss_mean": nan, "loss_std": nan, "loss_ci95_low": nan, "loss_ci95_high": nan,
                "loss_median": nan, "loss_q10": nan, "loss_q90": nan, "log10_loss_mean": nan}
    mean = float(L.mean())
    std = float(L.std()) if n > 1 else 0.0
    half = 1.96 * std / math.sqrt(n)
    q = torch.quantile(L, torch.tensor([0.1, 0.5, 0.9], dtype=L.dtype))
    return {**out, "loss_mean": mean, "loss_std": std, "loss_ci95_low": mean - half, "loss_ci95_high": mean + half,
            "loss_median": float(q[1]), "loss_q10": float(q[0]), "loss_q90": float(q[2]),
            "log10_loss_mean": float(L.clamp_min(1e-300).log10().mean())}


def steps_to_reach(loss: torch.Tensor, factor: float) -> float:
    """Median over tasks of the first step with loss ≤ factor·loss[0]; inf where a task never gets there.
    loss: (steps+1, B)."""
    ok = (loss <= factor * loss[0:1]) & torch.isfinite(loss)
    idx = torch.where(ok.any(0), ok.float().argmax(0).double(), torch.tensor(math.inf, dtype=torch.float64))
    return float(idx.median())


def fmt(x: float | None) -> str:
    """Three significant digits; "never" for inf, "nan", and "" for a missing value."""
    if x is None:
        return ""
    return "never" if x == math.inf else ("nan" if math.isnan(x) else f"{x:.3g}")


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


def t_interval(x: np.ndarray | torch.Tensor, level: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and Student-t CI of the mean over the first axis of x (n, ...): (mean, lo, hi), each x.shape[1:]."""
    from scipy.stats import t as student

    xa = np.asarray(x, float)
    n = xa.shape[0]
    mean = xa.mean(axis=0)
    if n < 2:
        return mean, np.full_like(mean, np.nan), np.full_like(mean, np.nan)
    half = student.ppf((1 + level) / 2, n - 1) * xa.std(axis=0, ddof=1) / math.sqrt(n)
    return mean, mean - half, mean + half
