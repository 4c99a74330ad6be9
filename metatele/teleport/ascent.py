"""Teleportation by gradient ascent (the paper's non-learned teleport): move along the level set to a
steeper point by ascending ‖∇L(g·W)‖² over the Lie-algebra element T of g = I + T, on a task's teleport
data (`metatele.tasks.TaskBatch.teleport_data`). Shapes as in `metatele.teleport.action`."""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from metatele.teleport.action import grad_norm_sq, normalize, pinv_full_rank, teleport

if TYPE_CHECKING:
    from metatele.tasks.base import TaskBatch, TeleportData

__all__ = ["steepest_direction", "gradient_ascent_teleport", "DEFAULT_STEP"]

DEFAULT_STEP = 0.03  # normalized ascent step: ‖ΔT‖_F per ascent step and layer


def steepest_direction(weights: Sequence[torch.Tensor], task: TaskBatch, data: TeleportData,
                       T: Sequence[torch.Tensor] | None = None, least_squares: bool = False,
                       X_pinv: torch.Tensor | None = None, skip_invalid: bool = False,
                       differentiable: bool = False) -> list[torch.Tensor]:
    """G_m = ∂‖∇L(g·W)‖²/∂T_m at g = I + T (T = 0 by default): the steepest-ascent direction of the squared
    gradient norm in the Lie algebra, one (B, k_m, k_m) per hidden layer. Detached from the weights unless
    `differentiable` (then G is a differentiable function of them, for exact meta-gradients).
    skip_invalid: tasks where the exact action is impossible get G = 0 instead of an error."""
    W0 = list(weights) if differentiable else [w.detach() for w in weights]
    X = data.batch.X
    X_pinv = X_pinv if X_pinv is not None else data.X_pinv
    if T is None:
        T = [torch.zeros(X.shape[0], w.shape[1], w.shape[1], dtype=X.dtype, device=X.device) for w in W0[:-1]]
    with torch.enable_grad():
        T = [t.detach().requires_grad_() for t in T]
        Wt = teleport(W0, X, T, None, act=task.activation, least_squares=least_squares, X_pinv=X_pinv,
                      skip_invalid=skip_invalid)
        _, grads = task.loss_and_grad(Wt, data.batch, create_graph=True)
        G = torch.autograd.grad(grad_norm_sq(grads).sum(), T, allow_unused=skip_invalid, create_graph=differentiable)
    return [torch.zeros_like(t) if gt is None else torch.nan_to_num(gt) if skip_invalid else gt for t, gt in zip(T, G)]


def gradient_ascent_teleport(
    weights: Sequence[torch.Tensor],
    task: TaskBatch,
    data: TeleportData,
    steps: int = 10,
    lr: float | None = None,
    least_squares: bool = False,
    skip_invalid: bool = False,
) -> list[torch.Tensor]:
    """Teleport towards a steeper point of the level set of `task`'s loss on `data`.

    Starts from T = 0 and takes `steps` ascent steps on ‖∇L(g·W)‖², then applies the exact action once.
    lr=None (default rule): normalized steps, T ← T + 0.03·G/‖G‖_F per layer and task, where
    G = ∂‖∇L‖²/∂T. This is scale-free (the raw G spans many orders of magnitude across tasks) and
    moves g at most 0.03·steps from I in Frobenius norm. A float lr takes plain steps T ← T + lr·G.
    The result is detached from the input weights' graph. skip_invalid: tasks where the exact action is
    impossible (a non-finite or rank-deficient layer input) keep their weights instead of failing the batch.
    """
    W0 = [w.detach() for w in weights]
    X = data.batch.X
    X_pinv = data.X_pinv if data.X_pinv is not None or skip_invalid else pinv_full_rank(X, least_squares)
    T = [torch.zeros(X.shape[0], w.shape[1], w.shape[1], dtype=X.dtype, device=X.device) for w in W0[:-1]]
    for _ in range(steps):
        G = steepest_direction(W0, task, data, T, least_squares, X_pinv, skip_invalid)
        T = [t + (DEFAULT_STEP * normalize(gt, 1.0) if lr is None else lr * gt) for t, gt in zip(T, G)]
    return [w.detach() for w in teleport(W0, X, T, None, act=task.activation, least_squares=least_squares,
                                         X_pinv=X_pinv, skip_invalid=skip_invalid)]
