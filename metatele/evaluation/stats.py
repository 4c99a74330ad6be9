"""Statistics in one place: summaries of per-task losses, steps to reach a loss, Student-t confidence
intervals over a few runs (seeds), and the number format of every table."""
from __future__ import annotations

import math

import torch

__all__ = ["summarize", "steps_to_reach", "mean_ci", "fmt"]


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


def mean_ci(x: torch.Tensor, dim: int = 0, level: float = 0.95) -> dict[str, torch.Tensor]:
    """Mean and two-sided Student-t confidence interval of x over `dim`, from its finite entries only.

    For a handful of runs (seeds) the normal 1.96 would be too narrow: with n = 5 the t quantile is 2.78.
    Returns float64 tensors with `dim` reduced: mean, low, high, n (finite entries used) and n_nonfinite.
    Where n < 2 the interval is NaN (and the mean too where n = 0)."""
    from scipy.stats import t as student_t

    x = x.double().cpu()
    ok = torch.isfinite(x)
    n = ok.sum(dim)
    xz = torch.where(ok, x, torch.zeros((), dtype=x.dtype))
    mean = xz.sum(dim) / n
    dev = torch.where(ok, x - mean.unsqueeze(dim), torch.zeros((), dtype=x.dtype))
    sd = (dev.pow(2).sum(dim) / (n - 1)).sqrt()
    q = torch.as_tensor(student_t.ppf(0.5 + level / 2, (n - 1).clamp_min(1).numpy()), dtype=x.dtype)
    half = torch.where(n >= 2, q * sd / n.sqrt(), torch.full_like(sd, math.nan))
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": n, "n_nonfinite": (~ok).sum(dim)}


def fmt(x: float | None) -> str:
    """Three significant digits; "never" for inf, "nan", and "" for a missing value."""
    if x is None:
        return ""
    return "never" if x == math.inf else ("nan" if math.isnan(x) else f"{x:.3g}")
