"""Teleportation for a user's own `nn.Sequential` MLP, in place.

The network must be Linear, (LeakyReLU, Linear)*: every activation an `nn.LeakyReLU` with one common slope
in (0, 1), and either every Linear with a bias or none. Its weights are read as the batched representation
of `metatele.teleport.action` with a task dimension of 1 (augmented [W b] when there are biases), acted on
by the same maths, and written back. The data X is (n, d0), one sample per row, as nn.Linear takes it.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from metatele.errors import ConfigError
from metatele.tasks.mlp import LeakyReLU
from metatele.teleport.action import group_action, teleport

__all__ = ["MLPStructure", "inspect_mlp", "get_weights", "set_weights_", "layer_inputs_T", "group_action_",
           "teleport_"]


class ArchitectureError(ConfigError):
    """The model is not an MLP that metatele can teleport."""


@dataclass(frozen=True)
class MLPStructure:
    """What teleporting needs to know about an nn.Sequential MLP."""

    linears: tuple[nn.Linear, ...]
    act: LeakyReLU
    bias: bool

    @property
    def widths(self) -> tuple[int, ...]:
        return (self.linears[0].in_features, *(lin.out_features for lin in self.linears))

    def max_batch(self) -> int:
        """The largest teleport batch for which the exact action exists: min over hidden-layer inputs of
        width (+1 with biases)."""
        return min(self.widths[:-2]) + int(self.bias)


def inspect_mlp(model: nn.Module) -> MLPStructure:
    """Check that `model` is a teleportable MLP and describe it; raises ArchitectureError otherwise."""
    if not isinstance(model, nn.Sequential):
        raise ArchitectureError(f"teleport needs an nn.Sequential, got {type(model).__name__}")
    mods = list(model)
    if len(mods) < 3 or len(mods) % 2 == 0:
        raise ArchitectureError("teleport needs Linear, (LeakyReLU, Linear)* with at least one hidden layer, "
                                f"got {len(mods)} modules")
    linears, slopes = mods[0::2], mods[1::2]
    for i, m in enumerate(linears):
        if not isinstance(m, nn.Linear):
            raise ArchitectureError(f"module {2 * i} is {type(m).__name__}; expected nn.Linear")
    for i, m in enumerate(slopes):
        if not isinstance(m, nn.LeakyReLU):
            raise ArchitectureError(f"module {2 * i + 1} is {type(m).__name__}; the group action needs an invertible "
                                    "nn.LeakyReLU (0 < negative_slope < 1) between the Linear layers")
    slope_set = {float(m.negative_slope) for m in slopes}
    if len(slope_set) != 1 or not 0.0 < next(iter(slope_set)) < 1.0:
        raise ArchitectureError(f"every LeakyReLU needs the same negative_slope in (0, 1), got {sorted(slope_set)}")
    biases = {lin.bias is not None for lin in linears}
    if len(biases) != 1:
        raise ArchitectureError("either every Linear has a bias or none does")
    for a, b in zip(linears[:-1], linears[1:]):
        if a.out_features != b.in_features:
            raise ArchitectureError(f"Linear widths do not chain: {a.out_features} → {b.in_features}")
    return MLPStructure(tuple(linears), LeakyReLU(next(iter(slope_set))), biases.pop())


def get_weights(s: MLPStructure) -> list[torch.Tensor]:
    """Detached copies of the weights, one (1, d_out, d_in [+ 1]) tensor per Linear."""
    out = []
    for lin in s.linears:
        W = lin.weight.detach()
        if s.bias:
            W = torch.cat([W, lin.bias.detach()[:, None]], dim=1)
        out.append(W[None].clone())
    return out


@torch.no_grad()
def set_weights_(s: MLPStructure, weights: Sequence[torch.Tensor]) -> None:
    """Write (1, d_out, d_in [+ 1]) weights back into the Linear layers, in place."""
    for lin, W in zip(s.linears, weights):
        lin.weight.copy_(W[0, :, : lin.in_features])
        if s.bias:
            lin.bias.copy_(W[0, :, -1])


def layer_inputs_T(s: MLPStructure, X: torch.Tensor) -> torch.Tensor:
    """Data (n, d0) → the batched layout (1, d0, n), after checking the exact action exists for it."""
    n = X.shape[0]
    if X.dim() != 2 or X.shape[1] != s.widths[0]:
        raise ArchitectureError(f"teleport data must be (n, {s.widths[0]}), got {tuple(X.shape)}")
    if n > s.max_batch():
        raise ArchitectureError(f"a teleport batch of {n} samples is too large for an exact action: it must not exceed "
                                f"a hidden layer's input width{' plus 1' if s.bias else ''} ({s.max_batch()})")
    return X.T[None]


def group_action_(model: nn.Sequential, X: torch.Tensor, g: Sequence[torch.Tensor]) -> None:
    """Apply g_m ∈ GL(k_m), one (k_m, k_m) per hidden layer, in place; the outputs on X are unchanged."""
    s = inspect_mlp(model)
    W = get_weights(s)
    new = group_action(W, layer_inputs_T(s, X.to(W[0])), [gm.to(W[0])[None] for gm in g], act=s.act, bias=s.bias)
    set_weights_(s, new)


def teleport_(model: nn.Sequential, X: torch.Tensor, T: Sequence[torch.Tensor], magnitude: float | None = None) -> None:
    """Apply g_m = I + T_m (each T_m (k_m, k_m) scaled to Frobenius norm `magnitude` unless None), in place."""
    s = inspect_mlp(model)
    W = get_weights(s)
    new = teleport(W, layer_inputs_T(s, X.to(W[0])), [t.to(W[0])[None] for t in T], magnitude, act=s.act, bias=s.bias)
    set_weights_(s, new)
