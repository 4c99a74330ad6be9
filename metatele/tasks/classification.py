"""A classification task family: bias-free LeakyReLU MLPs trained with cross-entropy on mini-batches of
a real dataset (`metatele.datasets`: MNIST-5k, digits, Fashion-MNIST).

A task's seed draws its initial weights (PyTorch's default `nn.Linear` law, U(±1/√fan_in)) and the order
in which it visits the training set; inner step t trains on samples t·b … t·b+b−1 of that order
(wrapping around each epoch). Teleports keep the loss on the first `teleport_batch` samples of the step's
mini-batch, which must not exceed any hidden layer's input width for the exact action (default: half of it).
Shapes: data X (B, d0, b), labels (B, b), weights[m] (B, d_{m+1}, d_m).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from metatele import checks, datasets
from metatele.errors import ConfigError
from metatele.tasks import mlp
from metatele.tasks.base import Batch, Symmetry, TeleportData, loss_and_grad
from metatele.tasks.mlp import LeakyReLU

__all__ = ["ClassificationFamily", "ClassificationTasks", "PAPER_MNIST_WIDTHS", "teleport_batch_for"]

PAPER_MNIST_WIDTHS = (784, 16, 10, 10)


def teleport_batch_for(widths: Sequence[int], batch_size: int, teleport_batch: int | None = None) -> int:
    """The teleport batch for an MLP of `widths` trained on mini-batches of `batch_size`: `teleport_batch`, checked
    (1 ≤ it ≤ the mini-batch and ≤ every hidden layer's input width, min(widths[:-2]), where the action is exact;
    else ValueError), or by default half that width limit, at most the mini-batch: a square layer input
    (n = width) is exact in theory but often too ill-conditioned in float32."""
    limit = min(widths[:-2])
    if teleport_batch is None:
        return max(1, min(limit // 2, batch_size))
    if not 1 <= teleport_batch <= min(limit, batch_size):
        raise ValueError(f"teleport_batch must be in 1..{min(limit, batch_size)} (≤ the mini-batch and ≤ every "
                         f"hidden layer's input width {limit}), got {teleport_batch}")
    return teleport_batch


@dataclass
class ClassificationTasks:
    """B classification tasks (the `TaskBatch` protocol) sharing one dataset."""

    inputs: torch.Tensor          # (N, d0) training images
    labels: torch.Tensor          # (N,)
    order: torch.Tensor           # (B, N) each task's visiting order
    weights: list[torch.Tensor]
    seeds: list[int]
    batch_size: int
    teleport_batch: int
    activation: LeakyReLU = field(default_factory=LeakyReLU)
    symmetry: Symmetry = Symmetry.GL

    @property
    def widths(self) -> tuple[int, ...]:
        return (self.inputs.shape[1], *(w.shape[1] for w in self.weights))

    def init_weights(self) -> list[torch.Tensor]:
        return list(self.weights)

    def data(self, step: int) -> Batch:
        N = self.order.shape[1]
        pos = (step * self.batch_size + torch.arange(self.batch_size, device=self.order.device)) % N
        idx = self.order[:, pos]                                   # (B, b)
        return Batch(self.inputs[idx].transpose(1, 2), self.labels[idx])

    def teleport_data(self, step: int) -> TeleportData:
        d = self.data(step)
        return TeleportData(Batch(d.X[..., : self.teleport_batch], d.Y[:, : self.teleport_batch]))

    def loss(self, weights: Sequence[torch.Tensor], data: Batch) -> torch.Tensor:
        return mlp.cross_entropy_loss(mlp.forward(weights, data.X, self.activation), data.Y)

    def loss_and_grad(self, weights: Sequence[torch.Tensor], data: Batch, *, create_graph: bool = False,
                      retain_graph: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return loss_and_grad(self.loss, weights, data, create_graph=create_graph, retain_graph=retain_graph)

    def to(self, device: torch.device | str) -> ClassificationTasks:
        return ClassificationTasks(self.inputs.to(device), self.labels.to(device), self.order.to(device),
                                   [w.to(device) for w in self.weights], self.seeds, self.batch_size,
                                   self.teleport_batch, self.activation, self.symmetry)

    def tile(self, copies: int) -> ClassificationTasks:
        """The B tasks `copies` times over (copies·B tasks; task j·B + i is task i), sharing the dataset."""
        return replace(self, order=self.order.repeat(copies, 1),
                       weights=[w.repeat(copies, *([1] * (w.dim() - 1))) for w in self.weights],
                       seeds=self.seeds * copies)


@dataclass(frozen=True)
class ClassificationFamily:
    """The classification `TaskFamily`. teleport_batch 0 means `teleport_batch_for`'s default."""

    dataset: str = "mnist5k"
    widths: tuple[int, ...] = PAPER_MNIST_WIDTHS
    batch_size: int = 20
    teleport_batch: int = 0
    activation: LeakyReLU = field(default_factory=LeakyReLU)
    name: str = "classification"

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(d) for d in self.widths))
        if len(self.widths) < 3 or min(self.widths) < 1:
            raise ValueError(f"widths need ≥ 3 positive entries (input, hidden..., classes), got {list(self.widths)}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")
        object.__setattr__(self, "teleport_batch",
                           teleport_batch_for(self.widths, self.batch_size, self.teleport_batch or None))

    @property
    def symmetry(self) -> Symmetry:
        return Symmetry.GL

    def member(self, seed: int) -> ClassificationFamily:
        return self

    def check_dataset(self) -> datasets.Dataset:
        """The dataset (loaded once per process), if the input and output widths fit it; else ConfigError."""
        data = datasets.load(self.dataset)
        if (self.widths[0], self.widths[-1]) != (data.n_features, data.n_classes):
            raise ConfigError(f"dataset {self.dataset} has {data.n_features} inputs and {data.n_classes} classes, "
                              f"but widths are {list(self.widths)}", params=("widths",))
        return data

    def sample(self, seeds: Sequence[int] | int, *, dtype: torch.dtype = torch.float32,
               device: torch.device | str = "cpu") -> ClassificationTasks:
        data = self.check_dataset()
        seeds = [seeds] if isinstance(seeds, int) else [int(s) for s in seeds]
        N = data.X_train.shape[0]
        orders, ws = [], [[] for _ in self.widths[1:]]
        for s in seeds:
            gen = torch.Generator().manual_seed(s)
            for m, (d_in, d_out) in enumerate(zip(self.widths[:-1], self.widths[1:])):
                bound = 1.0 / math.sqrt(d_in)
                ws[m].append((2 * torch.rand(d_out, d_in, generator=gen, dtype=torch.float64) - 1) * bound)
            orders.append(torch.randperm(N, generator=gen))
        cast = lambda ts: torch.stack(ts).to(dtype=dtype, device=device)  # noqa: E731
        return ClassificationTasks(data.X_train.to(dtype=dtype, device=device), data.y_train.to(device),
                                   torch.stack(orders).to(device), [cast(w) for w in ws], seeds, self.batch_size,
                                   self.teleport_batch, self.activation)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dataset": self.dataset, "widths": list(self.widths),
                "batch_size": self.batch_size, "teleport_batch": self.teleport_batch,
                "slope": self.activation.slope}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ClassificationFamily:
        """The family `to_dict()` described (untrusted: types and ranges are checked)."""
        return cls(checks.choice("dataset", d["dataset"], datasets.DATASETS), checks.widths("widths", d["widths"]),
                   checks.integer("batch_size", d["batch_size"], 1, checks.MAX_SAMPLES),
                   checks.integer("teleport_batch", d["teleport_batch"], 0, checks.MAX_WIDTH),
                   LeakyReLU(checks.positive_float("slope", d.get("slope", 0.1))))

    @classmethod
    def from_config(cls, keys: Mapping[str, Any]) -> ClassificationFamily:
        """From the config keys dataset, widths, data_batch and slope; the widths must fit the dataset (it is
        loaded to check)."""
        family = cls(checks.choice("dataset", keys["dataset"], datasets.DATASETS), checks.widths("widths", keys["widths"]),
                     checks.integer("data_batch", keys["data_batch"], 1, checks.MAX_SAMPLES),
                     activation=LeakyReLU(checks.positive_float("slope", keys["slope"])))
        family.check_dataset()
        return family
