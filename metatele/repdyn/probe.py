"""Recording the two-point state (H, Yd, w) during training: on an `nn.Sequential` (`sequential_split`) or on
metatele's batched MLP tasks (`task_probe`). Definitions in `metatele.repdyn.theory`."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from metatele.tasks.base import TaskBatch
from metatele.tasks.mlp import LeakyReLU, activations

__all__ = ["Split", "sequential_split", "mlp_split", "task_probe", "RepdynRecorder", "pair_constants", "Probe"]


Split = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def sequential_split(model: nn.Sequential, after: int) -> Split:
    """x → (hidden, output) for an nn.Sequential, reading the hidden layer after module index `after`."""
    enc, dec = model[: after + 1], model[after + 1:]

    def split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = enc(x)
        return h, dec(h)

    return split


def mlp_split(layer: int, act: LeakyReLU) -> Callable[[Sequence[torch.Tensor], torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """(weights, X (B, d0, n)) → (h_layer, output) for metatele's batched MLPs (layer counts from 1)."""
    def split(weights: Sequence[torch.Tensor], X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hs = activations(weights, X, act)
        return hs[layer - 1], torch.bmm(weights[-1], hs[-1])

    return split


def task_probe(task: TaskBatch, layer: int = 1, points: tuple[int, int] = (0, 1)
               ) -> tuple[Probe, Callable[[int, Sequence[torch.Tensor]], None]]:
    """A probe on samples `points` of the first data batch of metatele regression tasks (X (B, d0, n),
    Y (B, dL, n)) and a callback (step, weights) → None for `metatele.step.rollout`; one (H, Yd, w) series
    per task."""
    i, j = points
    data = task.data(0)
    probe = Probe(data.Y[..., j] - data.Y[..., i], dim=-1, points=points)
    split = mlp_split(layer, task.activation)
    return probe, lambda _t, weights: probe.record(*split(weights, data.X))


@dataclass(frozen=True)
class RepdynRecorder:
    """A recorder for `metatele.evaluation.compare.evaluate`: the (H, Yd, w) series of `task_probe` at hidden
    layer `layer`, (B, steps+1, 3) per method."""

    layer: int = 1
    points: tuple[int, int] = (0, 1)
    name: ClassVar[str] = "repdyn"
    channels: ClassVar[tuple[str, ...]] = ("H", "Yd", "w")

    def start(self, task: TaskBatch) -> tuple[Callable[[int, Sequence[torch.Tensor]], None], Callable[[], np.ndarray]]:
        probe, callback = task_probe(task, self.layer, self.points)
        return callback, probe.series


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
