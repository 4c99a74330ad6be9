"""The paper's task family: bias-free LeakyReLU MLP regression with squared loss, full-batch data.

A task is (X, Y, W_1..W_L) drawn from one integer seed, by a `Law`. The paper's law draws every entry
i.i.d. U[0, 1); other laws use a standard initialisation scale, centred data or a teacher network.
Shapes: X (B, d0, n), Y (B, dL, n), weights[m] (B, d_{m+1}, d_m). The paper's setting is widths
(20, 20, 20), n = 20.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from metatele import checks
from metatele.tasks import mlp
from metatele.tasks.base import Batch, Symmetry, TeleportData, loss_and_grad
from metatele.tasks.mlp import LeakyReLU
from metatele.linalg import pinv_full_rank

__all__ = ["Law", "PAPER_LAW", "LAWS", "RegressionFamily", "RegressionTasks", "PAPER_WIDTHS", "PAPER_N"]

PAPER_WIDTHS = (20, 20, 20)
PAPER_N = 20


@dataclass(frozen=True)
class Law:
    """How one task's entries are drawn (weights, then X, then Y, from one generator).

    weights: "uniform" U[0, 1) (the paper) or "normal" N(0, 1/fan_in) (a standard initialisation scale);
    data:    "uniform" U[0, 1) or "normal" N(0, 1) (centred);
    targets: "uniform" U[0, 1), "normal" N(0, 1), or "teacher": a random N(0, 1/fan_in) network of the
             same shape applied to X, plus N(0, 0.1²) noise.
    """

    weights: str = "uniform"
    data: str = "uniform"
    targets: str = "uniform"

    def __post_init__(self) -> None:
        for name, value, allowed in (("weights", self.weights, ("uniform", "normal")),
                                     ("data", self.data, ("uniform", "normal")),
                                     ("targets", self.targets, ("uniform", "normal", "teacher"))):
            if value not in allowed:
                raise ValueError(f"law {name} must be one of {', '.join(allowed)}, got {value!r}")

    def _draw(self, kind: str, shape: tuple[int, int], gen: torch.Generator) -> torch.Tensor:
        if kind == "uniform":
            return torch.rand(*shape, generator=gen, dtype=torch.float64)
        if kind == "fan_in":
            return torch.randn(*shape, generator=gen, dtype=torch.float64) / math.sqrt(shape[1])
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    def draw(self, widths: Sequence[int], n: int, act: LeakyReLU, seed: int
             ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """(X (d0, n), Y (dL, n), [W_m (d_m, d_{m-1})]) in float64 for one seed."""
        gen = torch.Generator().manual_seed(int(seed))
        wkind = "uniform" if self.weights == "uniform" else "fan_in"
        ws = [self._draw(wkind, (d_out, d_in), gen) for d_in, d_out in zip(widths[:-1], widths[1:])]
        X = self._draw(self.data, (widths[0], n), gen)
        if self.targets == "teacher":
            teacher = [self._draw("fan_in", (d_out, d_in), gen)[None] for d_in, d_out in zip(widths[:-1], widths[1:])]
            Y = mlp.forward(teacher, X[None], act)[0] + 0.1 * torch.randn(widths[-1], n, generator=gen,
                                                                          dtype=torch.float64)
        else:
            Y = self._draw(self.targets, (widths[-1], n), gen)
        return X, Y, ws


PAPER_LAW = Law()
LAWS = {  # named laws for configs and the CLI
    "paper": PAPER_LAW,
    "normal-init": Law(weights="normal"),
    "centred": Law(weights="normal", data="normal", targets="normal"),
    "teacher": Law(weights="normal", data="normal", targets="teacher"),
}


@dataclass
class RegressionTasks:
    """B regression tasks (the `TaskBatch` protocol). Full-batch: every step trains on all n samples."""

    X: torch.Tensor
    Y: torch.Tensor
    weights: list[torch.Tensor]
    seeds: list[int]
    activation: LeakyReLU = field(default_factory=LeakyReLU)
    _pinv: torch.Tensor | None = field(default=None, repr=False)

    @property
    def widths(self) -> tuple[int, ...]:
        return (self.X.shape[1], *(w.shape[1] for w in self.weights))

    @property
    def symmetry(self) -> Symmetry:
        return Symmetry.GL if self.X.shape[-1] <= min(self.widths[:-2]) else Symmetry.RESCALE

    def init_weights(self) -> list[torch.Tensor]:
        return list(self.weights)

    def data(self, step: int) -> Batch:
        return Batch(self.X, self.Y)

    def teleport_data(self, step: int) -> TeleportData:
        if self._pinv is None:
            self._pinv = pinv_full_rank(self.X)
        return TeleportData(Batch(self.X, self.Y), self._pinv)

    def loss(self, weights: Sequence[torch.Tensor], data: Batch) -> torch.Tensor:
        return mlp.squared_loss(mlp.forward(weights, data.X, self.activation), data.Y)

    def loss_and_grad(self, weights: Sequence[torch.Tensor], data: Batch, *, create_graph: bool = False,
                      retain_graph: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return loss_and_grad(self.loss, weights, data, create_graph=create_graph, retain_graph=retain_graph)

    def to(self, device: torch.device | str) -> RegressionTasks:
        return RegressionTasks(self.X.to(device), self.Y.to(device), [w.to(device) for w in self.weights],
                               self.seeds, self.activation)

    def tile(self, copies: int) -> RegressionTasks:
        """The B tasks `copies` times over (copies·B tasks; task j·B + i is task i), sharing the cached X⁺ if any."""
        rep = lambda x: x.repeat(copies, *([1] * (x.dim() - 1)))  # noqa: E731
        return RegressionTasks(rep(self.X), rep(self.Y), [rep(w) for w in self.weights], self.seeds * copies,
                               self.activation, None if self._pinv is None else rep(self._pinv))


@dataclass(frozen=True)
class RegressionFamily:
    """The regression `TaskFamily`: widths (d0, d1, ..., dL), n samples, a law and the activation."""

    widths: tuple[int, ...] = PAPER_WIDTHS
    n: int = PAPER_N
    law: Law = PAPER_LAW
    activation: LeakyReLU = field(default_factory=LeakyReLU)
    name: str = "regression"

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(d) for d in self.widths))
        if len(self.widths) < 3:
            raise ValueError(f"widths needs an input, at least one hidden and an output width, got {list(self.widths)}")
        if self.n < 1 or min(self.widths) < 1:
            raise ValueError(f"widths and n must be positive, got widths={list(self.widths)}, n={self.n}")

    @property
    def symmetry(self) -> Symmetry:
        """GL if n ≤ every width from the input to the last hidden layer's input, else RESCALE."""
        return Symmetry.GL if self.n <= min(self.widths[:-2]) else Symmetry.RESCALE

    def member(self, seed: int) -> RegressionFamily:
        return self

    def sample(self, seeds: Sequence[int] | int, *, dtype: torch.dtype = torch.float32,
               device: torch.device | str = "cpu") -> RegressionTasks:
        """One task per seed, deterministically. Entries are drawn in float64 and then cast, so a float32
        batch is the rounded float64 batch of the same seeds."""
        seeds = [seeds] if isinstance(seeds, int) else [int(s) for s in seeds]
        draws = [self.law.draw(self.widths, self.n, self.activation, s) for s in seeds]
        cast = lambda ts: torch.stack(ts).to(dtype=dtype, device=device)  # noqa: E731
        weights = [cast([d[2][m] for d in draws]) for m in range(len(self.widths) - 1)]
        return RegressionTasks(cast([d[0] for d in draws]), cast([d[1] for d in draws]), weights, seeds,
                               self.activation)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "widths": list(self.widths), "n": self.n, "law": asdict(self.law),
                "slope": self.activation.slope}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RegressionFamily:
        """The family `to_dict()` described (untrusted: types and ranges are checked)."""
        return cls(checks.widths("widths", d["widths"]), checks.integer("n", d["n"], 1, checks.MAX_SAMPLES),
                   Law(**d.get("law", {})), LeakyReLU(checks.positive_float("slope", d.get("slope", 0.1))))

    @classmethod
    def from_config(cls, keys: Mapping[str, Any]) -> RegressionFamily:
        """From the config keys widths, n, law (a name in LAWS) and slope."""
        return cls(checks.widths("widths", keys["widths"]), checks.integer("n", keys["n"], 1, checks.MAX_SAMPLES),
                   LAWS[checks.choice("law", keys["law"], tuple(LAWS))],
                   LeakyReLU(checks.positive_float("slope", keys["slope"])))
