"""Teleportable chains inside a user's model: Linear, (LeakyReLU, Linear)+ with one common slope in (0, 1) and
either every Linear with a bias or none, as described by `Chain`.

A chain's weights are read and written here only, as the batched representation of `metatele.teleport.action`
with a task dimension of 1: one (1, d_out, d_in) tensor per Linear, augmented [W b] (1, d_out, d_in + 1) when
the chain has biases. `metatele.nn.teleport` acts on them.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from metatele.errors import ConfigError
from metatele.tasks.mlp import LeakyReLU

__all__ = ["ArchitectureError", "Chain", "inspect_mlp", "find_chains", "chain_of", "to_sequential"]


class ArchitectureError(ConfigError):
    """The model (or a part of it) is not an MLP chain that metatele can teleport or train."""


@dataclass(frozen=True)
class Chain:
    """Linear, (LeakyReLU, Linear)+ layers of a model. names: the Linear layers' qualified names in the model."""

    names: tuple[str, ...]
    linears: tuple[nn.Linear, ...]
    act: LeakyReLU
    bias: bool

    @property
    def widths(self) -> tuple[int, ...]:
        return (self.linears[0].in_features, *(lin.out_features for lin in self.linears))

    @property
    def n_hidden(self) -> int:
        return len(self.linears) - 1

    def max_batch(self, layers: int | None = None) -> int:
        """The largest batch on which the exact action exists: min over the inputs of the teleported hidden layers
        (the first `layers`, default all) of width (+1 with biases)."""
        return min(self.widths[: self.check_layers(layers)]) + int(self.bias)

    def check_layers(self, layers: int | None) -> int:
        """The number of leading hidden layers to teleport (None: all), checked."""
        if layers is None:
            return self.n_hidden
        if not 1 <= layers <= self.n_hidden:
            raise ArchitectureError(f"layers must be in 1..{self.n_hidden} (the hidden layers), got {layers}")
        return layers

    def get_weights(self) -> list[torch.Tensor]:
        """Detached copies of the weights, one (1, d_out, d_in [+ 1]) tensor per Linear."""
        out = []
        for lin in self.linears:
            W = lin.weight.detach()
            if self.bias:
                W = torch.cat([W, lin.bias.detach()[:, None]], dim=1)
            out.append(W[None].clone())
        return out

    @torch.no_grad()
    def set_weights_(self, weights: Sequence[torch.Tensor]) -> None:
        """Write (1, d_out, d_in [+ 1]) weights (any dtype) back into the Linear layers, in place."""
        for lin, W in zip(self.linears, weights):
            lin.weight.copy_(W[0, :, : lin.in_features])
            if self.bias:
                lin.bias.copy_(W[0, :, -1])

    def as_params(self, model: nn.Module, weights: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """(1, d_out, d_in [+ 1]) weights as torch.func parameters of `model` (qualified name → tensor)."""
        out = {}
        for name, lin, W in zip(self.names, self.linears, weights):
            prefix = f"{name}." if name else ""
            out[f"{prefix}weight"] = W[0, :, : lin.in_features]
            if self.bias:
                out[f"{prefix}bias"] = W[0, :, -1]
        return out

    def inputs_T(self, X: torch.Tensor) -> torch.Tensor:
        """The chain's input batch (n, d0) → the batched layout (1, d0, n), after checking its shape."""
        if X.dim() != 2 or X.shape[1] != self.widths[0]:
            raise ArchitectureError(f"the chain's input must be (n, {self.widths[0]}) (one sample per row), "
                                    f"got {tuple(X.shape)}")
        return X.T[None]


def _chain(names: Sequence[str], mods: Sequence[nn.Module], where: str) -> Chain:
    """Check alternating Linear / LeakyReLU modules and describe them; ArchitectureError names what is wrong and,
    in `where`, who cannot use it."""
    linears, slopes = mods[0::2], mods[1::2]
    for name, m in zip(names[0::2], linears):
        if not isinstance(m, nn.Linear):
            raise ArchitectureError(f"{where}: module {name} is {type(m).__name__}; expected nn.Linear")
    for name, m in zip(names[1::2], slopes):
        if not isinstance(m, nn.LeakyReLU):
            raise ArchitectureError(f"{where}: module {name} is {type(m).__name__}; expected an invertible "
                                    "nn.LeakyReLU (0 < negative_slope < 1) between the Linear layers")
    slope_set = {float(m.negative_slope) for m in slopes}
    if len(slope_set) != 1 or not 0.0 < next(iter(slope_set)) < 1.0:
        raise ArchitectureError(f"{where}: every LeakyReLU needs the same negative_slope in (0, 1), "
                                f"got {sorted(slope_set)}")
    biases = {lin.bias is not None for lin in linears}
    if len(biases) != 1:
        raise ArchitectureError(f"{where}: either every Linear has a bias or none does")
    for a, b in zip(linears[:-1], linears[1:]):
        if a.out_features != b.in_features:
            raise ArchitectureError(f"{where}: Linear widths do not chain: {a.out_features} → {b.in_features}")
    return Chain(tuple(names[0::2]), tuple(linears), LeakyReLU(next(iter(slope_set))), biases.pop())


def inspect_mlp(model: nn.Module, purpose: str = "teleport") -> Chain:
    """`model` as one chain: an nn.Sequential of exactly Linear, (LeakyReLU, Linear)+; otherwise ArchitectureError,
    naming the layer and saying that `purpose` (e.g. "teleport", "the update") cannot use it."""
    where = f"{purpose} cannot use this model"
    if not isinstance(model, nn.Sequential):
        raise ArchitectureError(f"{where}: it needs an nn.Sequential of Linear, (LeakyReLU, Linear)+, "
                                f"got {type(model).__name__}")
    names, mods = zip(*model.named_children()) if len(model) else ((), ())
    if len(mods) < 3 or len(mods) % 2 == 0:
        raise ArchitectureError(f"{where}: it needs Linear, (LeakyReLU, Linear)* with at least one hidden layer, "
                                f"got {len(mods)} modules ({', '.join(type(m).__name__ for m in mods)})")
    return _chain(names, mods, where)


def find_chains(model: nn.Module) -> list[Chain]:
    """Every maximal run of Linear, (LeakyReLU, Linear)+ (one slope in (0, 1), all biased or none, widths
    chaining) among consecutive children of every nn.Sequential inside `model` (itself included), in module
    order. Linear layers outside such runs are not in any chain."""
    chains = []
    for prefix, seq in model.named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        kids = list(seq.named_children())
        i = 0
        while i < len(kids):
            j = i
            while j + 2 < len(kids) and _links(kids[j][1], kids[j + 1][1], kids[j + 2][1], kids[i + 1][1]):
                j += 2
            if j > i:
                names = [f"{prefix}.{n}" if prefix else n for n, _ in kids[i: j + 1]]
                chains.append(_chain(names, [m for _, m in kids[i: j + 1]], "find_chains"))
                i = j + 1
            else:
                i += 1
    return chains


def _links(a: nn.Module, act: nn.Module, b: nn.Module, first_act: nn.Module) -> bool:
    """Whether Linear a, LeakyReLU act, Linear b continue a chain whose first activation is first_act."""
    return (isinstance(a, nn.Linear) and isinstance(b, nn.Linear) and isinstance(act, nn.LeakyReLU)
            and isinstance(first_act, nn.LeakyReLU) and 0.0 < act.negative_slope < 1.0
            and act.negative_slope == first_act.negative_slope and a.out_features == b.in_features
            and (a.bias is None) == (b.bias is None))


def chain_of(model: nn.Module, names: Sequence[str], negative_slope: float) -> Chain:
    """A chain named by the user: the Linear layers `names` of `model`, in order, which the model's forward runs
    as Linear → LeakyReLU(negative_slope) → Linear → … (metatele cannot see the forward; the teleport is exact
    only if that holds)."""
    mods = dict(model.named_modules())
    missing = [n for n in names if n not in mods]
    if missing:
        raise ArchitectureError(f"no module named {', '.join(missing)} in {type(model).__name__}")
    if len(names) < 2:
        raise ArchitectureError(f"a chain needs at least two Linear layers, got {list(names)}")
    acts = [nn.LeakyReLU(negative_slope)] * (len(names) - 1)
    seq = [x for pair in zip([mods[n] for n in names], acts + [None]) for x in pair][:-1]
    labels = [x for pair in zip(names, ["LeakyReLU"] * len(acts) + [None]) for x in pair][:-1]
    return _chain(labels, seq, f"chain_of({type(model).__name__})")


def to_sequential(weights: Sequence[torch.Tensor], act: LeakyReLU, bias: bool = False, index: int = 0,
                  dtype: torch.dtype | None = None) -> nn.Sequential:
    """Network `index` of batched weights (B, d_out, d_in [+ 1]) as a new nn.Sequential (Linear, LeakyReLU, ...)
    in `dtype` (default the weights')."""
    layers: list[nn.Module] = []
    for W in weights:
        layers += [nn.Linear(W.shape[2] - int(bias), W.shape[1], bias=bias), nn.LeakyReLU(act.slope)]
    net = nn.Sequential(*layers[:-1]).to(device=weights[0].device, dtype=dtype or weights[0].dtype)
    inspect_mlp(net).set_weights_([W[index:index + 1] for W in weights])
    return net
