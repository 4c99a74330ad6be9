"""Two-point effective theory of representation learning (van Rossem & Saxe, ICML 2024).

For two inputs x1, x2 with targets y1*, y2*, a chosen hidden layer h and the output y, the state
    H = ‖Δh‖²,  Yd = ‖Δy‖²,  w = Δy·(Δy − Δy*)
follows a closed ODE with two effective learning rates (η_h, η_y); Dx = ‖Δx‖², Ds = ‖Δy*‖²:
    dH/dt  = − η_h Dx w
    dYd/dt = − w (η_y H + η_h Dx Yd / H)
    dw/dt  = − ½ η_y (3w − Yd + Ds) H − ½ η_h Dx (Yd + w) w / H
This module integrates it and gives its fixed point, conserved quantity and the two-point loss.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["rhs", "jacobian", "integrate", "conserved", "FixedPoint", "fixed_point", "analytic_loss"]



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
              rtol: float = 1e-8, atol: float = 1e-12, method: str = "Radau", max_steps: int | None = None
              ) -> np.ndarray:
    """(H, Yd, w) at times t (len T) → (T, 3) with a stiff solve_ivp method (Radau by default; the fitter
    searches with LSODA, 2–7× faster per fit in experiments/repdyn/check_fitter.py); NaN rows where it
    fails, or after `max_steps` solver steps if given (a budget in steps, not seconds, so that the result
    does not depend on how busy the machine is)."""
    from scipy.integrate import solve_ivp

    steps, stop = 0, math.inf

    def out_of_steps(t_: float, _s: np.ndarray) -> float:
        """Evaluated once per solver step: > 0 until the budget is spent, then stop − t (zero at the step that
        spent it, so the solver's root search ends the solve there)."""
        nonlocal steps, stop
        steps += 1
        if steps > max_steps and stop == math.inf:
            stop = t_
        return 1.0 if stop == math.inf else stop - t_

    out_of_steps.terminal = True  # type: ignore[attr-defined]
    out = np.full((len(t), 3), np.nan)
    with np.errstate(all="ignore"):
        try:
            sol = solve_ivp(lambda _, s: rhs(s, eta_h, eta_y, Dx, Ds), (float(t[0]), float(t[-1])),
                            np.asarray(state0, float), method=method, t_eval=t, rtol=rtol, atol=atol,
                            events=None if max_steps is None else out_of_steps,
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
