"""A learned optimizer on a user's own `nn.Sequential` MLP: the adapter (`metatele.nn.SequentialTask`) makes the
network's weights a batch of one task, the shared inner step (`metatele.step.inner_step`) trains it, and the
final weights are written back in place. Size-agnostic methods (`any-*`) run on any widths and depth, with or
without biases (their per-coordinate rule and teleport act on the augmented weights [W b]); the paper's
fixed-size LSTMs only on the bias-free shape they were trained for.

Shapes: X (n, d0), one sample per row as nn.Linear takes it; y (n,) class indices for cross-entropy, or (n, dL)
targets for the squared loss. Everything is checked before any work, and a refused call leaves the model as it
was. Divergence guard: a step whose loss or gradient is non-finite, or whose loss exceeds `DIVERGENCE_FACTOR` ×
the lowest positive loss so far, stops the run; the model keeps the last weights with a finite loss, and a
`DivergenceWarning` (the torch.optim interface's, `metatele.optim.guard`) says so. Teleports the method proposed
but could not apply (a rank-deficient teleport batch: the step then only updates) are counted and warned once per
run (`TeleportWarning`).
"""
from __future__ import annotations

import math
import time
import warnings
from typing import Literal

import torch
from torch import nn

from metatele.methods.base import Method, set_horizon
from metatele.nn import SequentialTask, TeleportWarning, full_rank_rows
from metatele.optim.guard import DivergenceWarning, divergence_reason
from metatele.step import Trajectory, inner_step
from metatele.teleport.action import grad_norm_sq

__all__ = ["DIVERGENCE_FACTOR", "DivergenceWarning", "sequential_task", "optimize_"]

DIVERGENCE_FACTOR = 1e3


def sequential_task(model: nn.Sequential, X: torch.Tensor, y: torch.Tensor, *,
                    loss: Literal["cross_entropy", "squared"] = "cross_entropy", batch_size: int | None = None,
                    teleport_batch: int | None = None, seed: int = 0) -> SequentialTask:
    """The task of training `model` on (X, y) (`SequentialTask.of`)."""
    return SequentialTask.of(model, X, y, loss=loss, batch_size=batch_size, teleport_batch=teleport_batch, seed=seed)


def _check_method_fits(method: Method, task: SequentialTask) -> None:
    """ValueError if `method` is a fixed-size learned optimizer trained for another shape than the task's."""
    spec = getattr(method, "spec", None)
    trained = tuple(getattr(spec, "widths", ()) or ())
    if not trained:
        return
    if task.bias or trained != task.widths:
        got = f"{list(task.widths)}{' with biases' if task.bias else ''}"
        raise ValueError(f"{method.name} is a fixed-size learned optimizer trained for bias-free widths "
                         f"{list(trained)}; this model is {got}. Use a size-agnostic one (any-*) for other shapes")


def _teleported(task: SequentialTask, weights: list[torch.Tensor], step: int) -> bool:
    """Whether step `step`'s teleport could act: its teleport data gives every hidden layer an input of full column
    rank. Checked at the weights after the step, which is the same answer (an invertible g keeps those ranks; a
    skipped teleport left the weights as they were)."""
    X = task.teleport_data(step).batch.X
    return full_rank_rows(weights[:-1], X, task.activation, task.bias, X.shape[-1]) == X.shape[-1]


def _warn_skipped(method: Method, skipped: int, teleports: int) -> None:
    if skipped:
        warnings.warn(f"{method.name}: {skipped} of {teleports} teleports were skipped (the step's teleport batch "
                      "gave a hidden layer a rank-deficient input, so no exact action existed; those steps only "
                      "updated)", TeleportWarning, stacklevel=3)


def optimize_(model: nn.Sequential, method: Method, X: torch.Tensor, y: torch.Tensor, steps: int, *,
              loss: Literal["cross_entropy", "squared"] = "cross_entropy", batch_size: int | None = None,
              teleport_batch: int | None = None, seed: int = 0) -> Trajectory:
    """Train `model` in place for `steps` inner steps of `method` (a learned optimizer or any `Method`) on (X, y);
    returns the trajectory (loss (steps+1, 1) on each step's batch, ‖∇L‖², seconds), shorter if the divergence
    guard (module docstring) stopped it: then its last row is the loss that tripped the guard."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    task = sequential_task(model, X, y, loss=loss, batch_size=batch_size, teleport_batch=teleport_batch, seed=seed)
    _check_method_fits(method, task)
    set_horizon(method, max(steps, 1))  # T of a method with progress features
    weights = last = task.init_weights()
    state = method.init_state(weights)
    losses, gns, secs = [], [], [0.0]
    lowest = math.inf
    teleports = skipped = 0
    start = time.perf_counter()
    with torch.no_grad():
        for t in range(steps + 1):
            if t < steps:
                res = inner_step(method, weights, state, task, t)
                L, G = res.loss, res.grad_norm_sq
                if res.proposal.teleport is not None:
                    teleports += 1
                    skipped += not _teleported(task, res.weights, t)
            else:
                L, grads = task.loss_and_grad(weights, task.data(steps))
                L, G = L.detach(), grad_norm_sq(grads)
            losses.append(L)
            gns.append(G)
            Lf, Gf = float(L[0]), float(G[0])
            why = divergence_reason(Lf, math.isfinite(Gf), lowest, DIVERGENCE_FACTOR)
            if why:
                kept = f"(loss {float(losses[-2][0]):.4g} on step {t - 1}'s batch)" if t else "(its initial ones)"
                warnings.warn(f"{method.name} diverged at step {t}: {why}. Stopped; the model keeps its last weights "
                              f"with a finite loss {kept}", DivergenceWarning, stacklevel=2)
                task.write_(last)
                _warn_skipped(method, skipped, teleports)
                return Trajectory(torch.stack(losses), torch.stack(gns), torch.tensor(secs))
            lowest, last = min(lowest, Lf) if Lf > 0 else lowest, weights
            if t < steps:
                weights, state = [w.detach() for w in res.weights], res.state
                secs.append(time.perf_counter() - start)
    task.write_(weights)
    _warn_skipped(method, skipped, teleports)
    return Trajectory(torch.stack(losses), torch.stack(gns), torch.tensor(secs))
