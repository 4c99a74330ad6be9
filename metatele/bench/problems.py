"""The benchmark's fixed problems: task families with a horizon, a split and fixed seed ranges.

A `Problem` is a task family (regression under one of the four laws, or cross-entropy on mini-batches of a
real dataset), optionally with biases (`BiasedTasks`), and a horizon. Splits:
- "train": problems the meta-training mixture draws from (on training seeds only);
- "validation": problems on which meta-training selects its checkpoint (never reported);
- "heldout": problems no meta-training run sees (unseen laws, widths, depths, datasets).
Seeds: reported runs use REPORT_FIRST_SEED…+seeds−1; baseline tuning uses TUNE_FIRST_SEED…; checkpoint
selection VALID_FIRST_SEED…; meta-training `metatele.tasks.seeds.train_seeds` — four disjoint ranges.
The loss a problem reports is its full-batch training loss (regression), or for a mini-batch problem the training
loss on a fixed evaluation set of EVAL_SAMPLES training samples (`Problem.eval_batch`), the same for every method
and seed: one mini-batch's loss is too noisy to rank runs or to time them.
Shapes: weights[m] (B, d_{m+1}, d_m) or, with biases, (B, d_{m+1}, d_m + 1).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from metatele import datasets
from metatele.datasets import FASHION_DIR
from metatele.tasks import mlp
from metatele.tasks.base import Batch, Symmetry, TaskBatch, TeleportData, loss_and_grad
from metatele.tasks.classification import ClassificationFamily, ClassificationTasks
from metatele.tasks.regression import LAWS, RegressionFamily
from metatele.tasks.seeds import EVAL_FIRST_SEED, VALID_FIRST_SEED

__all__ = ["REPORT_FIRST_SEED", "TUNE_FIRST_SEED", "SELECT_FIRST_SEED", "EVAL_SAMPLES", "BiasedTasks", "Problem",
           "SUITE", "QUICK_SUITE", "suite", "split"]

REPORT_FIRST_SEED = EVAL_FIRST_SEED + 26_000_000      # the runs the tables report
TUNE_FIRST_SEED = VALID_FIRST_SEED + 26_000_000       # baseline lr tuning
SELECT_FIRST_SEED = VALID_FIRST_SEED + 27_000_000     # checkpoint selection during meta-training
EVAL_SAMPLES = 1024    # a mini-batch problem's evaluation set: this many training samples, drawn once (seed 0)


@dataclass
class BiasedTasks:
    """`inner` tasks with a bias per unit: weights[m] = [W_m b_m] (B, d_{m+1}, d_m + 1), biases drawn
    U(±1/√fan_in) from the task's seed (PyTorch's nn.Linear law). The GL teleport is gated off (NONE)."""

    inner: Any
    biases: list[torch.Tensor]
    symmetry: Symmetry = Symmetry.NONE

    @property
    def seeds(self) -> list[int]:
        return self.inner.seeds

    @property
    def activation(self) -> mlp.LeakyReLU:
        return self.inner.activation

    @property
    def widths(self) -> tuple[int, ...]:
        return self.inner.widths

    def init_weights(self) -> list[torch.Tensor]:
        return [torch.cat([w, b[..., None]], dim=-1) for w, b in zip(self.inner.init_weights(), self.biases)]

    def data(self, step: int) -> Batch:
        return self.inner.data(step)

    def teleport_data(self, step: int) -> TeleportData:
        return self.inner.teleport_data(step)

    def loss(self, weights: Sequence[torch.Tensor], data: Batch) -> torch.Tensor:
        out = mlp.forward(weights, data.X, self.activation, bias=True)
        if isinstance(self.inner, ClassificationTasks):
            return mlp.cross_entropy_loss(out, data.Y)
        return mlp.squared_loss(out, data.Y)

    def loss_and_grad(self, weights: Sequence[torch.Tensor], data: Batch, *, create_graph: bool = False,
                      retain_graph: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return loss_and_grad(self.loss, weights, data, create_graph=create_graph, retain_graph=retain_graph)

    def to(self, device: torch.device | str) -> BiasedTasks:
        return BiasedTasks(self.inner.to(device), [b.to(device) for b in self.biases])


def _biases(widths: Sequence[int], seeds: Sequence[int], dtype: torch.dtype, device: torch.device | str
            ) -> list[torch.Tensor]:
    out = []
    for m, (d_in, d_out) in enumerate(zip(widths[:-1], widths[1:])):
        rows = []
        for s in seeds:
            gen = torch.Generator().manual_seed(int(s) * 31 + 7 + m)
            rows.append((2 * torch.rand(d_out, generator=gen, dtype=torch.float64) - 1) / math.sqrt(d_in))
        out.append(torch.stack(rows).to(dtype=dtype, device=device))
    return out


@dataclass(frozen=True)
class Problem:
    """One benchmark problem. kind "regression" (law, n samples, full batch) or a dataset name (cross-entropy on
    mini-batches of `batch`); widths (d0, …, dL); steps: the horizon the tables report."""

    name: str
    split: str
    kind: str
    widths: tuple[int, ...]
    steps: int
    law: str = "normal-init"
    n: int = 16
    batch: int = 32
    bias: bool = False
    note: str = field(default="", compare=False)

    @property
    def family(self) -> RegressionFamily | ClassificationFamily:
        if self.kind == "regression":
            return RegressionFamily(self.widths, self.n, LAWS[self.law])
        return ClassificationFamily(self.kind, self.widths, self.batch)

    @property
    def hidden_layers(self) -> int:
        return len(self.widths) - 2

    def sample(self, seeds: Sequence[int], dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
               ) -> TaskBatch:
        tasks = self.family.sample(list(seeds), dtype=dtype, device=device)
        if self.bias:
            return BiasedTasks(tasks, _biases(self.widths, seeds, dtype, device))
        return tasks

    def eval_batch(self, tasks: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
                   ) -> Batch | None:
        """A mini-batch problem's evaluation set for `tasks` tasks: X (tasks, d0, n), labels (tasks, n), n =
        min(EVAL_SAMPLES, N) training samples drawn once without replacement (seed 0); None for a full-batch problem,
        whose training loss is already exact."""
        if self.kind == "regression":
            return None
        data = datasets.load(self.kind)
        N = data.X_train.shape[0]
        idx = torch.randperm(N, generator=torch.Generator().manual_seed(0))[:min(EVAL_SAMPLES, N)]
        X = data.X_train[idx].T.to(dtype=dtype, device=device)
        return Batch(X.expand(tasks, *X.shape), data.y_train[idx].to(device).expand(tasks, -1))

    def describe(self) -> str:
        data = f"{self.law} law, n={self.n}" if self.kind == "regression" else f"{self.kind}, batch {self.batch}"
        return f"{'-'.join(map(str, self.widths))}, {data}{', biases' if self.bias else ''}"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "split": self.split, "kind": self.kind, "widths": list(self.widths),
                "steps": self.steps, "law": self.law, "n": self.n, "batch": self.batch, "bias": self.bias}


P = Problem
SUITE: tuple[Problem, ...] = (
    # meta-training problems: laws paper / normal-init / centred, widths 8-64, 1-4 hidden layers, digits
    P("paper-20x3", "train", "regression", (20, 20, 20), 100, law="paper", n=20),
    P("normal-16-32-32-4", "train", "regression", (16, 32, 32, 4), 200, n=16),
    P("centred-8-32-1-n64", "train", "regression", (8, 32, 1), 200, law="centred", n=64),
    P("normal-24-48-8-bias", "train", "regression", (24, 48, 8), 200, n=24, bias=True),
    P("digits-64-32-10", "train", "digits", (64, 32, 10), 200),
    P("digits-64-32-32-10-bias", "train", "digits", (64, 32, 32, 10), 200, bias=True),
    P("normal-12-24x4-3", "train", "regression", (12, 24, 24, 24, 24, 3), 200, n=12),
    # checkpoint selection
    P("val-centred-12-40-40-3", "validation", "regression", (12, 40, 40, 3), 200, law="centred", n=12),
    P("val-digits-64-48-10-bias", "validation", "digits", (64, 48, 10), 200, bias=True),
    P("val-normal-20-40x3-5", "validation", "regression", (20, 40, 40, 40, 5), 200, n=20),
    # held out: an unseen law, widths up to 256, up to 6 hidden layers, an unseen dataset
    P("teacher-16-64-64-4-n32", "heldout", "regression", (16, 64, 64, 4), 200, law="teacher", n=32),
    P("teacher-8-8-8-1", "heldout", "regression", (8, 8, 8, 1), 200, law="teacher", n=8),
    P("centred-32-256-8-n64", "heldout", "regression", (32, 256, 8), 200, law="centred", n=64),
    P("normal-16-32x6-4", "heldout", "regression", (16, 32, 32, 32, 32, 32, 32, 4), 200, n=16),
    P("teacher-16-128-4-bias", "heldout", "regression", (16, 128, 4), 200, law="teacher", n=64, bias=True),
    P("digits-64-256-10", "heldout", "digits", (64, 256, 10), 200),
    P("mnist5k-784-32-32-10", "heldout", "mnist5k", (784, 32, 32, 10), 200),
    P("mnist5k-784-64-10-bias", "heldout", "mnist5k", (784, 64, 10), 200, bias=True),
    P("fashion-784-64-10", "heldout", "fashion-mnist", (784, 64, 10), 200,
      note="only where Debian's dataset-fashion-mnist is installed"),
)

QUICK_SUITE: tuple[Problem, ...] = (
    P("q-normal-8-16-2", "train", "regression", (8, 16, 2), 40, n=8),
    P("q-teacher-8-16-16-1-n24", "heldout", "regression", (8, 16, 16, 1), 40, law="teacher", n=24),
    P("q-digits-64-16-10-bias", "heldout", "digits", (64, 16, 10), 40, bias=True),
)


def available(problem: Problem) -> bool:
    """False for Fashion-MNIST problems where the Debian dataset is not installed."""
    return problem.kind != "fashion-mnist" or (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file()


def suite(quick: bool = False) -> list[Problem]:
    """The problems that can run on this machine (the quick suite for CI)."""
    return [p for p in (QUICK_SUITE if quick else SUITE) if available(p)]


def split(name: str, quick: bool = False) -> list[Problem]:
    return [p for p in suite(quick) if p.split == name]
