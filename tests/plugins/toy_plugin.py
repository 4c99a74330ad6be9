"""A user's module, as a plugin (`metatele train --plugin tests/plugins/toy_plugin.py`): a toy task family (teacher
regression with a RESCALE symmetry only) and a toy learned method (GD with one learned log step size), each
registered in a few lines."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from metatele import checks
from metatele.learned import LearnedSpec, MetaOptimizer, register_learned
from metatele.methods import Proposal, add_update
from metatele.tasks import Batch, LeakyReLU, Symmetry, TeleportData, register_family
from metatele.tasks import mlp
from metatele.tasks.base import loss_and_grad


@dataclass
class ToyTasks:
    X: torch.Tensor
    Y: torch.Tensor
    weights: list[torch.Tensor]
    seeds: list[int]
    activation: LeakyReLU = field(default_factory=LeakyReLU)
    symmetry: Symmetry = Symmetry.RESCALE

    @property
    def widths(self) -> tuple[int, ...]:
        return (self.X.shape[1], *(w.shape[1] for w in self.weights))

    def init_weights(self) -> list[torch.Tensor]:
        return list(self.weights)

    def data(self, step: int) -> Batch:
        return Batch(self.X, self.Y)

    def teleport_data(self, step: int) -> TeleportData:
        return TeleportData(Batch(self.X, self.Y))

    def loss(self, weights: Sequence[torch.Tensor], data: Batch) -> torch.Tensor:
        return mlp.squared_loss(mlp.forward(weights, data.X, self.activation), data.Y)

    def loss_and_grad(self, weights, data, *, create_graph=False, retain_graph=False):
        return loss_and_grad(self.loss, weights, data, create_graph=create_graph, retain_graph=retain_graph)

    def to(self, device) -> ToyTasks:
        return ToyTasks(self.X.to(device), self.Y.to(device), [w.to(device) for w in self.weights], self.seeds)


@dataclass(frozen=True)
class ToyFamily:
    widths: tuple[int, ...] = (4, 6, 2)
    n: int = 12
    name: str = "toy"
    symmetry = Symmetry.RESCALE  # n may exceed the widths: only rescaling keeps the loss

    def member(self, seed: int) -> ToyFamily:
        return self

    def sample(self, seeds: Sequence[int], *, dtype=torch.float32, device="cpu") -> ToyTasks:
        Xs, Ys, Ws = [], [], [[] for _ in self.widths[1:]]
        for s in seeds:
            gen = torch.Generator().manual_seed(int(s))
            X = torch.randn(self.widths[0], self.n, generator=gen, dtype=torch.float64)
            Xs.append(X)
            Ys.append(torch.sin(torch.randn(self.widths[-1], self.widths[0], generator=gen, dtype=torch.float64) @ X))
            for m, (a, b) in enumerate(zip(self.widths[:-1], self.widths[1:])):
                Ws[m].append(torch.randn(b, a, generator=gen, dtype=torch.float64) / a ** 0.5)
        cast = lambda ts: torch.stack(ts).to(dtype=dtype, device=device)  # noqa: E731
        return ToyTasks(cast(Xs), cast(Ys), [cast(w) for w in Ws], list(seeds))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "widths": list(self.widths), "n": self.n}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ToyFamily:
        return cls(checks.widths("widths", d["widths"]), checks.integer("n", d["n"], 1, 1000))

    @classmethod
    def from_config(cls, keys: Mapping[str, Any]) -> ToyFamily:
        return cls.from_dict(keys)


@dataclass(frozen=True)
class ToyLRSpec(LearnedSpec):
    init_lr: float = 0.01

    def check(self) -> None:
        checks.positive_float("init_lr", self.init_lr)


@dataclass
class LearnedStep:
    owner: nn.Module

    def init(self, weights):
        return None

    def propose(self, prop: Proposal, grads, state, *, weights):
        return add_update(prop, [self.owner.log_lr.exp() * g for g in grads]), None


class ToyLR(MetaOptimizer):
    def __init__(self, spec: ToyLRSpec) -> None:
        super().__init__(spec)
        self.log_lr = nn.Parameter(torch.tensor(spec.init_lr).log())
        self.compose(update=LearnedStep(self))


register_family("toy", ToyFamily)
register_learned("toy-lr", ToyLR, ToyLRSpec)
