"""Two-point effective theory of representation learning (van Rossem & Saxe, ICML 2024).

For two inputs x1, x2 with targets y1*, y2*, a chosen hidden layer h and the output y, the state
    H = ‖Δh‖²,  Yd = ‖Δy‖²,  w = Δy·(Δy − Δy*)
follows a closed ODE with two effective learning rates (η_h, η_y); Dx = ‖Δx‖², Ds = ‖Δy*‖²:
    dH/dt  = − η_h Dx w
    dYd/dt = − w (η_y H + η_h Dx Yd / H)
    dw/dt  = − ½ η_y (3w − Yd + Ds) H − ½ η_h Dx (Yd + w) w / H
This module integrates it, gives its fixed point and conserved quantity, records (H, Yd, w) during
training (`Probe`) and fits (η_h, η_y) to recordings (`fit`); metatele.repdyn_paper runs the paper's experiments.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

# --- the theory --------------------------------------------------------------------------------


def rhs(state: np.ndarray, eta_h: float, eta_y: float, Dx: float, Ds: float) -> np.ndarray:
    """d/dt (H, Yd, w)."""
    H, Yd, w = state
    return np.array([
        -eta_h * Dx * w,
        -w * (eta_y * H + eta_h * Dx * Yd / H),
        -0.5 * eta_y * (3 * w - Yd + Ds) * H - 0.5 * eta_h * Dx * (Yd + w) * w / H,
    ])


def jacobian(state: np.ndarray, eta_h: float, eta_y: float, Dx: float, Ds: float) -> np.ndarray:
    """∂(rhs)/∂(H, Yd, w), 3×3 (lets the stiff solver skip finite differences)."""
    H, Yd, w = state
    a, b = eta_h * Dx, eta_y
    return np.array([
        [0.0, 0.0, -a],
        [-w * (b - a * Yd / H**2), -w * a / H, -(b * H + a * Yd / H)],
        [-0.5 * b * (3 * w - Yd + Ds) + 0.5 * a * (Yd + w) * w / H**2, 0.5 * b * H - 0.5 * a * w / H,
         -1.5 * b * H - 0.5 * a * (Yd + 2 * w) / H],
    ])


def integrate(state0: Sequence[float], t: np.ndarray, eta_h: float, eta_y: float, Dx: float, Ds: float,
              rtol: float = 1e-8, atol: float = 1e-12, method: str = "Radau", max_seconds: float = 2.0) -> np.ndarray:
    """(H, Yd, w) at times t (len T) → (T, 3) with a stiff solve_ivp method (Radau by default; the fitter
    searches with LSODA, 2–7× faster per fit in experiments/repdyn/check_fitter.py); NaN rows where it
    fails or takes over max_seconds."""
    import time

    from scipy.integrate import solve_ivp

    deadline = time.perf_counter() + max_seconds

    def out_of_time(_t: float, _s: np.ndarray) -> float:
        return deadline - time.perf_counter()

    out_of_time.terminal = True  # type: ignore[attr-defined]
    out = np.full((len(t), 3), np.nan)
    with np.errstate(all="ignore"):
        try:
            sol = solve_ivp(lambda _, s: rhs(s, eta_h, eta_y, Dx, Ds), (float(t[0]), float(t[-1])),
                            np.asarray(state0, float), method=method, t_eval=t, rtol=rtol, atol=atol, events=out_of_time,
                            jac=lambda _, s: jacobian(s, eta_h, eta_y, Dx, Ds))
        except (ValueError, ZeroDivisionError, np.linalg.LinAlgError):  # the state left the domain (H → 0)
            return out
    out[: sol.y.shape[1]] = sol.y.T
    return out


def conserved(H: np.ndarray, Yd: np.ndarray, eta_h: float, eta_y: float, Dx: float) -> np.ndarray:
    """Yd/H − (η_y / (η_h Dx)) H, constant along the flow."""
    return Yd / H - eta_y / (eta_h * Dx) * H


@dataclass
class FixedPoint:
    A_low: float
    A_high: float
    H_inf: float


def fixed_point(H0: float, Yd0: float, eta_h: float, eta_y: float, Dx: float, Ds: float) -> FixedPoint:
    """Final representational distance H∞ = ½A_high + sqrt(¼A_high² + A_low²) (w = 0, Yd = Ds)."""
    A_low = math.sqrt(eta_h / eta_y) * math.sqrt(Dx) * math.sqrt(Ds)
    A_high = H0 - eta_h / eta_y * Dx * Yd0 / H0
    return FixedPoint(A_low, A_high, 0.5 * A_high + math.sqrt(0.25 * A_high**2 + A_low**2))


def analytic_loss(t: np.ndarray, w: np.ndarray, Yd: np.ndarray, Ds: float, ybar_gap0_sq: float, eta_ybar: float
                  ) -> np.ndarray:
    """Two-point training loss ½·mean‖y − y*‖² = ¼[2 e^{−2η_ȳ t}‖ȳ(0) − ȳ*‖² + w + ½(Ds − Yd)]."""
    return 0.25 * (2 * np.exp(-2 * eta_ybar * t) * ybar_gap0_sq + w + 0.5 * (Ds - Yd))


# --- the probe ---------------------------------------------------------------------------------

Split = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def sequential_split(model: nn.Sequential, after: int) -> Split:
    """x → (hidden, output) for an nn.Sequential, reading the hidden layer after module index `after`."""
    enc, dec = model[: after + 1], model[after + 1:]

    def split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = enc(x)
        return h, dec(h)

    return split


def mlp_split(layer: int) -> Callable[[Sequence[torch.Tensor], torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """(weights, X (B, d0, n)) → (h_layer, output) for metatele's batched MLPs (layer counts from 1)."""
    from metatele import tasks

    def split(weights: Sequence[torch.Tensor], X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hs = tasks.hidden(weights, X)
        return hs[layer - 1], torch.bmm(weights[-1], hs[-1])

    return split


def task_probe(X: torch.Tensor, Y: torch.Tensor, layer: int = 1, points: tuple[int, int] = (0, 1)
               ) -> tuple[Probe, Callable[[int, Sequence[torch.Tensor]], None]]:
    """A probe on samples `points` of metatele tasks X (B, d0, n), Y (B, dL, n) and a callback
    (step, weights) → None for `metatele.step.run`; one (H, Yd, w) series per task."""
    i, j = points
    probe = Probe(Y[..., j] - Y[..., i], dim=-1, points=points)
    split = mlp_split(layer)
    return probe, lambda _t, weights: probe.record(*split(weights, X))


def pair_constants(X: torch.Tensor, Y: torch.Tensor, points: tuple[int, int] = (0, 1)) -> tuple[np.ndarray, np.ndarray]:
    """Dx = ‖x_j − x_i‖², Ds = ‖y*_j − y*_i‖² per task, each (B,)."""
    i, j = points
    return ((X[..., j] - X[..., i]).pow(2).sum(1).double().cpu().numpy(),
            (Y[..., j] - Y[..., i]).pow(2).sum(1).double().cpu().numpy())


class Probe:
    """Records (H, Yd, w) for two points. `record(h, y)` takes the hidden and output values of both
    points with the point index on dimension `dim` (0 for (2, features) batches, −1 for metatele's
    (B, features, n) layout, which yields one series per task)."""

    def __init__(self, dy_star: torch.Tensor, dim: int = 0, points: tuple[int, int] = (0, 1)) -> None:
        self.dy_star, self.dim, self.points = dy_star, dim, points
        self.rows: list[torch.Tensor] = []

    def _diff(self, v: torch.Tensor) -> torch.Tensor:
        i, j = self.points
        d = v.select(self.dim, j) - v.select(self.dim, i)
        return d.reshape(d.shape[0], -1) if self.dim != 0 else d.reshape(1, -1)

    @torch.no_grad()
    def record(self, h: torch.Tensor, y: torch.Tensor) -> None:
        dh, dy = self._diff(h), self._diff(y)
        ds = self.dy_star.reshape(dy.shape[0] if self.dy_star.dim() > 1 else 1, -1)
        self.rows.append(torch.stack([dh.pow(2).sum(1), dy.pow(2).sum(1), (dy * (dy - ds)).sum(1)], 1).double().cpu())

    def series(self) -> np.ndarray:
        """(n_series, T, 3) array of (H, Yd, w)."""
        return torch.stack(self.rows, 1).numpy()


# --- the fitter --------------------------------------------------------------------------------


LOG_ETA_RANGE = (math.log(1e-9), math.log(1e4))  # the fitter's search box for η_h and η_y (per step)
SEARCH_SECONDS = {"LSODA": 0.5, "Radau": 10.0}  # time limit per integration while searching (a candidate over it loses)


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
                         SEARCH_SECONDS[search])
        c = float(((pred - data) ** 2).sum())
        return c if math.isfinite(c) else 1e300

    ratio = data[-1, 0] ** 2 / (Dx * Ds)
    grid = [np.log([g * ratio, g]) for g in np.logspace(-7, 1, 17)]
    best = min(grid, key=cost)
    res = minimize(cost, best, method="Nelder-Mead", options={"xatol": 1e-4, "fatol": 1e-15, "maxiter": 200})
    eta_h, eta_y = (math.exp(v) for v in res.x)
    pred = integrate(data[0], t, eta_h, eta_y, Dx, Ds)
    return Fit(eta_h, eta_y, r2(data[:, 0], pred[:, 0]), r2(data[:, 1], pred[:, 1]), r2(data[:, 2], pred[:, 2]), t, pred)
