"""Teleport a user's `nn.Sequential` MLP, in place, to a point of the level set with lower or higher sharpness φ
or orbit curvature ψ (`metatele.teleport.measures`): gradient steps on the group element g = I + T
(`metatele.teleport.ascent.ascend`) of the nearest exact action on a teleport batch X, so the loss on X stays
put, while the measure is evaluated on a (larger) probe batch with directions fixed for the whole teleport.

The exact action needs a teleport batch no larger than every hidden layer's input width (+1 with biases),
e.g. 16 samples for the paper's 784-16-10-10 net; the loss elsewhere (the rest of the probe batch, the
training set) is not kept and the drift there should be measured and reported. Work is in float64.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from metatele.errors import ConfigError, TeleportDriftError
from metatele.teleport.ascent import DEFAULT_STEP, ascend
from metatele.teleport.measures import PAPER_RADII, lie_directions, orbit_curvature, sharpness
from metatele.teleport.sequential import MLPStructure, get_weights, inspect_mlp, layer_inputs_T, set_weights_

__all__ = ["OBJECTIVES", "DRIFT_TOL", "TargetResult", "as_params", "teleport_to_target_"]

OBJECTIVES: dict[str, tuple[str, bool]] = {  # name → (measure, raise it?)
    "sharpness-down": ("sharpness", False),
    "sharpness-up": ("sharpness", True),
    "curvature-up": ("curvature", True),
    "curvature-down": ("curvature", False),
}
DRIFT_TOL = 1e-8  # relative change of the teleport-batch loss allowed in float64 (as the convergence teleport)


@dataclass(frozen=True)
class TargetResult:
    """The measure on the probe batch and the loss on the teleport batch (float64), before and after."""

    objective: str
    before: float
    after: float
    batch_loss_before: float
    batch_loss_after: float

    @property
    def drift(self) -> float:
        """Relative change of the teleport-batch loss."""
        return abs(self.batch_loss_after - self.batch_loss_before) / abs(self.batch_loss_before)


def as_params(model: nn.Module, s: MLPStructure, weights: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batched representation (1, d_out, d_in [+ 1]) as torch.func parameters of `model` (name → tensor)."""
    names = {id(mod): name for name, mod in model.named_modules()}
    out = {}
    for lin, W in zip(s.linears, weights):
        name = names[id(lin)]
        out[f"{name}.weight"] = W[0, :, : lin.in_features]
        if s.bias:
            out[f"{name}.bias"] = W[0, :, -1]
    return out


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
) -> TargetResult:
    """Teleport `model` in place on the batch X (n, d0), labels y, towards `objective` (a key of OBJECTIVES),
    with the measure evaluated on probe = (X_p, y_p): sharpness with n_dirs normal directions and `radii`,
    curvature with n_dirs uniform Lie-algebra draws, both from `seed`. steps, step (normalized) and group ("gl":
    the nearest exact GL action on X; "diag": positive rescaling, which keeps the function on all data) as in
    `ascend`. Raises TeleportDriftError if the loss on (X, y) moved by more than DRIFT_TOL."""
    if objective not in OBJECTIVES:
        raise ConfigError(f"unknown teleport objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    measure, maximize = OBJECTIVES[objective]
    s = inspect_mlp(model)
    W = [w.double() for w in get_weights(s)]
    XT = layer_inputs_T(s, X.to(W[0]))
    Xp, yp = probe[0].to(W[0]), probe[1].to(W[0].device)
    if measure == "sharpness":
        def value(Wt: list[torch.Tensor]) -> torch.Tensor:
            return sharpness(model, loss_fn, [(Xp, yp)], radii, n_dirs, seed, params=as_params(model, s, Wt))[None]
    else:
        M = lie_directions(s.widths[1:-1], n_dirs, seed, dtype=W[0].dtype, device=W[0].device)
        XpT = Xp.T[None]

        def value(Wt: list[torch.Tensor]) -> torch.Tensor:
            return orbit_curvature(Wt, XpT, M, act=s.act, bias=s.bias).mean()[None]

    def batch_loss(Wt: list[torch.Tensor]) -> float:
        return float(loss_fn(functional_call(model, as_params(model, s, Wt), (XT[0].T,)), y.to(XT.device)))

    with torch.no_grad():
        before, L0 = float(value(W)), batch_loss(W)
    new = ascend(W, XT, value, act=s.act, steps=steps, step=step, maximize=maximize, group=group, bias=s.bias,
                 nearest=True)
    with torch.no_grad():
        res = TargetResult(objective, before, float(value(new)), L0, batch_loss(new))
    if not res.drift <= DRIFT_TOL:
        raise TeleportDriftError(f"teleport to {objective} changed the teleport-batch loss by {res.drift:.2e} "
                                 f"(relative; tolerance {DRIFT_TOL:g}): the batch is too ill-conditioned")
    set_weights_(s, new)  # copied into the model's own dtype
    return res
