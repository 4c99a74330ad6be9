"""Training and measuring networks for the generalization study: B networks trained by SGD through the one
inner step, their loss and accuracy on a whole split, one of them as an `nn.Sequential`, and the shared data."""
from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

import torch
from torch import nn

from metatele import datasets
from metatele.methods import baseline
from metatele.step import inner_step
from metatele.nn import to_sequential
from metatele.studies.common import SLOPE, classification_metrics
from metatele.studies.generalization.plan import HIDDEN, MEASURE_BATCH, PAPER_BATCH, PAPER_LR, Plan
from metatele.tasks import ClassificationFamily, ClassificationTasks, LeakyReLU, mlp

__all__ = ["log", "split_metrics", "train", "network", "setup", "measure_batches"]


def log(msg: str, progress: bool = True) -> None:
    """A progress line on stderr (hidden by --no-progress)."""
    if progress:
        print(msg, file=sys.stderr, flush=True)


def split_metrics(weights: Sequence[torch.Tensor], X: torch.Tensor, y: torch.Tensor, act: LeakyReLU
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy and accuracy of B networks (weights[m] (B, ...)) on X (N, d0), y (N,): two (B,) tensors."""
    B = weights[0].shape[0]
    return classification_metrics(lambda Xc: mlp.forward(weights, Xc.T[None].expand(B, -1, -1), act), X, y)


def train(task: ClassificationTasks, weights: list[torch.Tensor], epochs: range, steps_per_epoch: int,
           after_epoch: Callable[[int, list[torch.Tensor]], None] | None = None) -> list[torch.Tensor]:
    """Plain SGD (the paper's lr) through `inner_step`, epoch by epoch."""
    method = baseline("gd", lr=PAPER_LR)
    with torch.no_grad():
        for epoch in epochs:
            for t in range(epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch):
                weights = [w.detach() for w in inner_step(method, weights, None, task, t).weights]
            if after_epoch is not None:
                after_epoch(epoch, weights)
    return weights


def network(weights: Sequence[torch.Tensor], b: int, dtype: torch.dtype) -> nn.Sequential:
    """Network b of the batch as an nn.Sequential (Linear, LeakyReLU, ...) without biases."""
    return to_sequential(weights, LeakyReLU(SLOPE), index=b, dtype=dtype)


def setup(dataset: str, seeds: list[int], device: str) -> tuple[datasets.Dataset, ClassificationTasks, int]:
    data = datasets.load(dataset)
    fam = ClassificationFamily(dataset, (data.n_features, *HIDDEN, data.n_classes), PAPER_BATCH)
    return data, fam.sample(seeds, device=device), data.X_train.shape[0] // PAPER_BATCH


def measure_batches(data: datasets.Dataset, plan: Plan, device: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    perm = torch.randperm(data.X_train.shape[0], generator=torch.Generator().manual_seed(0))
    X, y = data.X_train.to(device, torch.float64), data.y_train.to(device)
    n = min(plan.measure_batches, data.X_train.shape[0] // MEASURE_BATCH)
    return [(X[idx], y[idx]) for idx in perm[: n * MEASURE_BATCH].to(device).split(MEASURE_BATCH)]
