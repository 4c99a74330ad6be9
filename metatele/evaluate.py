"""Evaluation on unseen tasks: statistics that never average in diverged tasks."""
from __future__ import annotations

import math

import torch


def summarize(loss: torch.Tensor) -> dict[str, float]:
    """Statistics of per-task losses (B,) over the finite tasks; diverged tasks are counted, not averaged."""
    finite = torch.isfinite(loss)
    L = loss[finite].double()
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
