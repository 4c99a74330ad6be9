"""A learned optimizer on a user's own `nn.Sequential` MLP: the network's weights become a batch of one task (the
`TaskBatch` protocol), the shared inner step (`metatele.step`) trains it, and the final weights are written back
in place. Size-agnostic methods (`any-*`) run on any widths and depth; the paper's fixed-size LSTMs only on the
shape they were trained for.

The network must be bias-free Linear, (LeakyReLU, Linear)* layers (`metatele.teleport.sequential.inspect_mlp`
reads it); the learned methods' weight layout has no biases, so a network with biases is refused.
Shapes: X (n, d0), one sample per row as nn.Linear takes it; y (n,) class indices for cross-entropy, or (n, dL)
targets for the squared loss.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from metatele.methods.base import Method
from metatele.step import Trajectory, rollout
from metatele.tasks.base import TaskBatch
from metatele.tasks.classification import ClassificationTasks, teleport_batch_for
from metatele.tasks.regression import RegressionTasks
from metatele.teleport.sequential import ArchitectureError, MLPStructure, get_weights, inspect_mlp, set_weights_

__all__ = ["LOSSES", "sequential_task", "optimize_"]

LOSSES = ("cross_entropy", "squared")


def sequential_task(model: nn.Sequential, X: torch.Tensor, y: torch.Tensor, *,
                    loss: Literal["cross_entropy", "squared"] = "cross_entropy", batch_size: int | None = None,
                    teleport_batch: int | None = None, seed: int = 0) -> TaskBatch:
    """The task of training `model` on (X, y), as a batch of one, starting from the model's current weights.

    cross_entropy: inner step t trains on mini-batch t of a seeded shuffle of the n samples (batch_size, default
    min(n, 128)); teleports keep the loss on its first teleport_batch samples (default: the classification
    family's, `teleport_batch_for`). squared: ½‖y − f(X)‖² summed over entries, full batch (the paper's
    regression loss)."""
    return _task(_bias_free(model), X, y, loss, batch_size, teleport_batch, seed)


def _bias_free(model: nn.Sequential) -> MLPStructure:
    s = inspect_mlp(model)
    if s.bias:
        raise ArchitectureError("learned optimizers train bias-free networks; build the Linear layers with bias=False")
    return s


def _task(s: MLPStructure, X: torch.Tensor, y: torch.Tensor, loss: str, batch_size: int | None,
          teleport_batch: int | None, seed: int) -> TaskBatch:
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    weights = get_weights(s)
    W0 = weights[0]
    X = X.to(W0)
    if X.ndim != 2 or X.shape[1] != W0.shape[2]:
        raise ValueError(f"X must be (n, {W0.shape[2]}), got {tuple(X.shape)}")
    if loss == "squared":
        Y = y.to(W0)
        if Y.shape != (X.shape[0], weights[-1].shape[1]):
            raise ValueError(f"y must be (n, {weights[-1].shape[1]}) for the squared loss, got {tuple(Y.shape)}")
        return RegressionTasks(X.T[None], Y.T[None], weights, [seed], s.act)
    n = X.shape[0]
    b = min(n, 128) if batch_size is None else batch_size
    if not 0 < b <= n:
        raise ValueError(f"need 0 < batch_size ≤ n = {n}, got {b}")
    tb = teleport_batch_for((W0.shape[2], *(W.shape[1] for W in weights)), b, teleport_batch)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[None].to(W0.device)
    return ClassificationTasks(X, y.to(W0.device, torch.long), order, weights, [seed], b, tb, s.act)


def optimize_(model: nn.Sequential, method: Method, X: torch.Tensor, y: torch.Tensor, steps: int, *,
              loss: Literal["cross_entropy", "squared"] = "cross_entropy", batch_size: int | None = None,
              teleport_batch: int | None = None, seed: int = 0) -> Trajectory:
    """Train `model` in place for `steps` inner steps of `method` (a learned optimizer or any `Method`) on (X, y);
    returns the trajectory (loss (steps+1, 1) on each step's batch, ‖∇L‖², seconds). If the loss becomes
    non-finite, the model keeps its last finite weights."""
    s = _bias_free(model)
    task = _task(s, X, y, loss, batch_size, teleport_batch, seed)
    last: list[torch.Tensor] = task.init_weights()

    def keep_finite(t: int, weights: list[torch.Tensor]) -> None:
        nonlocal last
        if all(bool(torch.isfinite(w).all()) for w in weights):
            last = weights

    traj = rollout(method, task, steps, keep_finite)
    set_weights_(s, last)
    return traj
