"""Teleportation by gradient ascent (the paper's non-learned teleport): move along the level set to a
steeper point by ascending ‖∇L(g·W)‖² over the Lie-algebra element T of g = I + T. `ascend` is the one
ascent loop, for any loss given as a gradient function; `gradient_ascent_teleport` runs it on a task's
teleport data (`metatele.tasks.TaskBatch.teleport_data`), and `metatele.teleport.sequential` on a user's
nn.Sequential. Shapes as in `metatele.teleport.action`."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch

from metatele.teleport.action import grad_norm_sq, normalize, pinv_full_rank, teleport, with_ones

if TYPE_CHECKING:
    from metatele.tasks.base import TaskBatch, TeleportData
    from metatele.tasks.mlp import LeakyReLU

__all__ = ["ascend", "gradient_ascent_teleport", "DEFAULT_STEP"]

DEFAULT_STEP = 0.03  # normalized ascent step: ‖ΔT‖_F per ascent step and layer

GradFn = Callable[[list[torch.Tensor]], Sequence[torch.Tensor]]


def ascend(
    weights: Sequence[torch.Tensor],
    X: torch.Tensor,
    grads_of: GradFn,
    *,
    act: LeakyReLU,
    steps: int = 10,
    lr: float | None = None,
    X_pinv: torch.Tensor | None = None,
    least_squares: bool = False,
    bias: bool = False,
    anchor: bool = False,
) -> list[torch.Tensor]:
    """T (one detached (B, k_m, k_m) per hidden layer) after `steps` ascent steps on ‖∇L(g·W)‖² from T = 0.

    grads_of(W') returns ∂L/∂W' for weights W' (a list like `weights`) with create_graph=True, so that
    ‖∇L‖² can be differentiated through it. lr=None (default rule): normalized steps,
    T ← T + 0.03·G/‖G‖_F per layer and task, where G = ∂‖∇L‖²/∂T. This is scale-free (the raw G spans many
    orders of magnitude across tasks) and moves g at most 0.03·steps from I in Frobenius norm. A float lr
    takes plain steps T ← T + lr·G. X_pinv: the first layer input's pseudo-inverse ([X; 1] with bias), computed
    if None.
    """
    W0 = [w.detach() for w in weights]
    if X_pinv is None:
        X_pinv = pinv_full_rank(with_ones(X) if bias else X, least_squares)
    T = [torch.zeros(X.shape[0], w.shape[1], w.shape[1], dtype=X.dtype, device=X.device) for w in W0[:-1]]
    with torch.enable_grad():
        for _ in range(steps):
            T = [t.detach().requires_grad_() for t in T]
            Wt = teleport(W0, X, T, None, act=act, least_squares=least_squares, X_pinv=X_pinv, bias=bias,
                          anchor=anchor)
            G = torch.autograd.grad(grad_norm_sq(grads_of(Wt)).sum(), T)
            T = [t + (DEFAULT_STEP * normalize(gt, 1.0) if lr is None else lr * gt) for t, gt in zip(T, G)]
    return [t.detach() for t in T]


def gradient_ascent_teleport(
    weights: Sequence[torch.Tensor],
    task: TaskBatch,
    data: TeleportData,
    steps: int = 10,
    lr: float | None = None,
    least_squares: bool = False,
) -> list[torch.Tensor]:
    """Teleport towards a steeper point of the level set of `task`'s loss on `data`: `ascend` (see there
    for the step rule), then the exact action once. The result is detached from the input weights' graph."""
    X = data.batch.X
    X_pinv = pinv_full_rank(X, least_squares) if data.X_pinv is None else data.X_pinv
    act = task.activation
    T = ascend(weights, X, lambda Wt: task.loss_and_grad(Wt, data.batch, create_graph=True)[1], act=act,
               steps=steps, lr=lr, X_pinv=X_pinv, least_squares=least_squares)
    return [w.detach() for w in teleport([w.detach() for w in weights], X, T, None, act=act,
                                         least_squares=least_squares, X_pinv=X_pinv)]
