"""Representation dynamics (van Rossem & Saxe, ICML 2024): the two-point ODE (`theory`), recording it
during training (`probe`), fitting its two effective learning rates (`fit`), and the paper's experiments
(`paper`, `figures`; run by `metatele repdyn`)."""
from __future__ import annotations

from metatele.repdyn.fit import LOG_ETA_RANGE, SEARCH_STEPS, Fit, fit, r2
from metatele.repdyn.probe import Probe, RepdynRecorder, mlp_split, pair_constants, sequential_split, task_probe
from metatele.repdyn.theory import FixedPoint, analytic_loss, conserved, fixed_point, integrate, jacobian, rhs

__all__ = ["LOG_ETA_RANGE", "SEARCH_STEPS", "Fit", "fit", "r2", "Probe", "RepdynRecorder", "mlp_split", "pair_constants",
           "sequential_split", "task_probe", "FixedPoint", "analytic_loss", "conserved", "fixed_point", "integrate",
           "jacobian", "rhs"]
