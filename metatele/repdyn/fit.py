"""Fitting the two effective learning rates (η_h, η_y) of the two-point ODE to a recorded (H, Yd, w) series."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from metatele.repdyn.theory import integrate

__all__ = ["LOG_ETA_RANGE", "SEARCH_STEPS", "Fit", "r2", "fit"]



LOG_ETA_RANGE = (math.log(1e-9), math.log(1e4))  # the fitter's search box for η_h and η_y (per step)
SEARCH_STEPS = 20_000  # solver steps per integration while searching (a candidate over it loses; a good one takes
                       # 200–500 on the paper's series, see tests/test_repdyn.py); a budget in steps, not seconds


@dataclass
class Fit:
    eta_h: float
    eta_y: float
    r2_H: float
    r2_Y: float
    r2_w: float
    t: np.ndarray     # the fitting grid (steps)
    pred: np.ndarray  # (len(t), 3) fitted trajectory on it


def r2(y: np.ndarray, yhat: np.ndarray) -> float:
    sst = float(((y - y.mean()) ** 2).sum())
    return 1.0 - float(((y - yhat) ** 2).sum()) / sst if sst > 0 else float("nan")


def fit(data: np.ndarray, Dx: float, Ds: float, t: np.ndarray | None = None, max_points: int = 300,
        search: str = "LSODA") -> Fit:
    """Fit (η_h, η_y) to a recorded (T, 3) series of (H, Yd, w) (time unit = one step): start from the
    recorded state at t0, integrate (with `search` while searching, LSODA by default for speed; the reported fit
    and R² use Radau), minimise Σ(H−Ĥ)² + Σ(Yd−Ŷd)² + Σ(w−ŵ)². A grid over a
    log-scale multiplier g·(ratio, 1), ratio = H_end²/(Dx·Ds), seeds a Nelder–Mead refinement in log space."""
    from scipy.optimize import minimize

    t = np.arange(len(data), dtype=float) if t is None else np.asarray(t, float)
    idx = np.unique(np.linspace(0, len(t) - 1, min(max_points, len(t))).round().astype(int))
    t, data = t[idx], data[idx]

    def cost(log_eta: np.ndarray) -> float:
        if not (LOG_ETA_RANGE[0] <= log_eta.min() and log_eta.max() <= LOG_ETA_RANGE[1]):
            return 1e300
        pred = integrate(data[0], t, math.exp(log_eta[0]), math.exp(log_eta[1]), Dx, Ds, 1e-7, 1e-12, search,
                         SEARCH_STEPS)
        c = float(((pred - data) ** 2).sum())
        return c if math.isfinite(c) else 1e300

    ratio = data[-1, 0] ** 2 / (Dx * Ds)
    grid = [np.log([g * ratio, g]) for g in np.logspace(-7, 1, 17)]
    best = min(grid, key=cost)
    res = minimize(cost, best, method="Nelder-Mead", options={"xatol": 1e-4, "fatol": 1e-15, "maxiter": 200})
    eta_h, eta_y = (math.exp(v) for v in res.x)
    pred = integrate(data[0], t, eta_h, eta_y, Dx, Ds)
    return Fit(eta_h, eta_y, r2(data[:, 0], pred[:, 0]), r2(data[:, 1], pred[:, 1]), r2(data[:, 2], pred[:, 2]), t, pred)
