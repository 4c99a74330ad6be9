"""Teleport a user's `nn.Sequential` MLP, in place, to a point of the level set with lower or higher sharpness φ
or orbit curvature ψ (`metatele.teleport.measures`): gradient steps on the group element g = I + T
(`metatele.teleport.ascent.ascend`) of the nearest exact action on a teleport batch X, so the loss on X stays
put, while the measure is evaluated on a (larger) probe batch with directions fixed for the whole teleport.

The exact action needs a teleport batch no larger than every hidden layer's input width (+1 with biases),
e.g. 16 samples for the paper's 784-16-10-10 net; the loss elsewhere (the rest of the probe batch, the
training set) is not kept and the drift there should be measured and reported. Work is in float64.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from metatele.errors import ConfigError, TeleportDriftError
from metatele.nn import ArchitectureError, TeleportResult, inspect_mlp
from metatele.teleport.ascent import DEFAULT_STEP, ascend
from metatele.teleport.measures import PAPER_RADII, lie_directions, orbit_curvature, sharpness

__all__ = ["OBJECTIVES", "DRIFT_TOL", "teleport_to_target_"]

OBJECTIVES: dict[str, tuple[str, bool]] = {  # name → (measure, raise it?)
    "sharpness-down": ("sharpness", False),
    "sharpness-up": ("sharpness", True),
    "curvature-up": ("curvature", True),
    "curvature-down": ("curvature", False),
}
DRIFT_TOL = 1e-8  # relative change of the teleport-batch loss allowed in float64 (as the convergence teleport)


def teleport_to_target_(
    model: nn.Sequential,
    X: torch.Tensor,
    y: torch.Tensor,
    objective: str,
    probe: tuple[torch.Tensor, torch.Tensor],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
    *,
    steps: int = 10,
    step: float = DEFAULT_STEP,
    group: Literal["gl", "diag"] = "gl",
    n_dirs: int = 8,
    radii: Sequence[float] = PAPER_RADII,
    seed: int = 0,
) -> TeleportResult:
    """Teleport `model` in place on the batch X (n, d0), labels y, towards `objective` (a key of OBJECTIVES),
    with the measure evaluated on probe = (X_p, y_p): sharpness with n_dirs normal directions and `radii`,
    curvature with n_dirs uniform Lie-algebra draws, both from `seed`. steps, step (normalized) and group ("gl":
    the nearest exact GL action on X; "diag": positive rescaling, which keeps the function on all data) as in
    `ascend`. Returns the measure before and after (objective_before/after) and the loss on (X, y) (float64).
    Raises TeleportDriftError if the loss on (X, y) moved by more than DRIFT_TOL."""
    t0 = time.perf_counter()
    if objective not in OBJECTIVES:
        raise ConfigError(f"unknown teleport objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    measure, maximize = OBJECTIVES[objective]
    chain = inspect_mlp(model)
    W = [w.double() for w in chain.get_weights()]
    XT = chain.inputs_T(X).to(W[0])
    if X.shape[0] > chain.max_batch():
        raise ArchitectureError(f"a teleport batch of {X.shape[0]} samples is too large for an exact action: it must "
                                f"not exceed a hidden layer's input width{' plus 1' if chain.bias else ''} "
                                f"({chain.max_batch()})")
    Xp, yp = probe[0].to(W[0]), probe[1].to(W[0].device)
    if measure == "sharpness":
        def value(Wt: list[torch.Tensor]) -> torch.Tensor:
            return sharpness(model, loss_fn, [(Xp, yp)], radii, n_dirs, seed, params=chain.as_params(model, Wt))[None]
    else:
        M = lie_directions(chain.widths[1:-1], n_dirs, seed, dtype=W[0].dtype, device=W[0].device)
        XpT = Xp.T[None]

        def value(Wt: list[torch.Tensor]) -> torch.Tensor:
            return orbit_curvature(Wt, XpT, M, act=chain.act, bias=chain.bias).mean()[None]

    def batch_loss(Wt: list[torch.Tensor]) -> float:
        return float(loss_fn(functional_call(model, chain.as_params(model, Wt), (XT[0].T,)), y.to(XT.device)))

    with torch.no_grad():
        before, L0 = float(value(W)), batch_loss(W)
    new = ascend(W, XT, value, act=chain.act, steps=steps, step=step, maximize=maximize, group=group,
                 bias=chain.bias, nearest=True)
    with torch.no_grad():
        res = TeleportResult(X.shape[0], X.shape[0], "applied", loss_before=L0, loss_after=batch_loss(new),
                             objective=objective, objective_before=before, objective_after=float(value(new)))
    if not res.drift <= DRIFT_TOL:
        raise TeleportDriftError(f"teleport to {objective} changed the teleport-batch loss by {res.drift:.2e} "
                                 f"(relative; tolerance {DRIFT_TOL:g}): the batch is too ill-conditioned")
    chain.set_weights_(new)  # copied into the model's own dtype
    return replace(res, seconds=time.perf_counter() - t0)
