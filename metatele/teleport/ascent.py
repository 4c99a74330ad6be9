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

__all__ = ["gradient_ascent_teleport", "DEFAULT_STEP"]

DEFAULT_STEP = 0.03  # normalized ascent step: ‖ΔT‖_F per ascent step and layer


def gradient_ascent_teleport(
    weights: Sequence[torch.Tensor],
    task: TaskBatch,
    data: TeleportData,
    steps: int = 10,
    lr: float | None = None,
    least_squares: bool = False,
) -> list[torch.Tensor]:
    """Teleport towards a steeper point of the level set of `task`'s loss on `data`.

    Starts from T = 0 and takes `steps` ascent steps on ‖∇L(g·W)‖², then applies the exact action once.
    lr=None (default rule): normalized steps, T ← T + 0.03·G/‖G‖_F per layer and task, where
    G = ∂‖∇L‖²/∂T. This is scale-free (the raw G spans many orders of magnitude across tasks) and
    moves g at most 0.03·steps from I in Frobenius norm. A float lr takes plain steps T ← T + lr·G.
    The result is detached from the input weights' graph.
    """
    W0 = [w.detach() for w in weights]
    X = data.batch.X
    X_pinv = pinv_full_rank(X, least_squares) if data.X_pinv is None else data.X_pinv
    act = task.activation
    T = [torch.zeros(X.shape[0], w.shape[1], w.shape[1], dtype=X.dtype, device=X.device) for w in W0[:-1]]
    with torch.enable_grad():
        for _ in range(steps):
            T = [t.detach().requires_grad_() for t in T]
            Wt = teleport(W0, X, T, None, act=act, least_squares=least_squares, X_pinv=X_pinv)
            _, grads = task.loss_and_grad(Wt, data.batch, create_graph=True)
            G = torch.autograd.grad(grad_norm_sq(grads).sum(), T)
            T = [t + (DEFAULT_STEP * normalize(gt, 1.0) if lr is None else lr * gt) for t, gt in zip(T, G)]
    return [w.detach() for w in teleport(W0, X, [t.detach() for t in T], None, act=act,
                                         least_squares=least_squares, X_pinv=X_pinv)]
