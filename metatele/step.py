"""The one inner step shared by meta-training and evaluation:

    gradient → local update (learned, GD or Adam) → teleport (learned, gradient ascent, or none).

A *method* is anything with `init_state(weights)` and `propose(weights, grads, state)`; it returns a
`Proposal` saying what to subtract and how to teleport. `inner_step` is the only place where a
proposal is applied. Shapes: weights[m] (B, d_{m+1}, d_m); losses (B,).
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from metatele import symmetry, tasks


@dataclass
class Proposal:
    """What a method wants done this step, computed from the gradients at the start of the step.

    update: subtracted from the weights (None: no local update).
    T: learned Lie-algebra elements, one (B, k, k) per hidden layer, each normalized to eps[m]
       (a float or a (B,) tensor); g = I + T applied after the update (exact or first-order action).
    ascent_steps: > 0 runs gradient-ascent teleport (the non-learned baseline) after the update.
    lr: the step size used, if the method has one (for logging).
    """

    update: list[torch.Tensor] | None
    T: list[torch.Tensor] | None = None
    eps: list[float | torch.Tensor] | None = None
    exact: bool = True
    ascent_steps: int = 0
    lr: torch.Tensor | None = None


class Method(Protocol):
    name: str

    def init_state(self, weights: Sequence[torch.Tensor]) -> Any: ...

    def propose(self, weights: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], state: Any
                ) -> tuple[Proposal, Any]: ...


@dataclass
class StepResult:
    weights: list[torch.Tensor]
    state: Any
    loss: torch.Tensor            # (B,) loss at the weights the step started from
    grad_norm_sq: torch.Tensor    # (B,) ‖∇L‖² there
    proposal: Proposal


def inner_step(method: Method, weights: Sequence[torch.Tensor], state: Any, task: tasks.TaskBatch,
               X_pinv: torch.Tensor | None = None, differentiable: bool = False, second_order: bool = True
               ) -> StepResult:
    """One step on B tasks.

    differentiable: keep the graph so a meta-loss on later weights reaches the method's parameters.
    second_order: also differentiate through the inner gradients (the exact meta-gradient); False is
    the usual first-order L2O approximation (gradients enter the method as constants).
    """
    create = differentiable and second_order
    L, grads = tasks.loss_and_grad(weights, task.X, task.Y, create_graph=create, retain_graph=differentiable)
    if not create:
        grads = [g.detach() for g in grads]
    prop, state = method.propose(weights, grads, state)
    new = list(weights) if prop.update is None else [w - u for w, u in zip(weights, prop.update)]
    if prop.T is not None:
        new = symmetry.teleport(new, task.X, prop.T, prop.eps, exact=prop.exact, X_pinv=X_pinv)
    elif prop.ascent_steps > 0:
        new = symmetry.gradient_ascent_teleport(new, task.X, task.Y, steps=prop.ascent_steps, X_pinv=X_pinv)
    return StepResult(new, state, L if differentiable else L.detach(),
                      symmetry.grad_norm_sq([g.detach() for g in grads]), prop)


@dataclass
class Trajectory:
    """Per-step records of a run on B tasks: losses and grad norms (steps+1, B), seconds per step."""

    loss: torch.Tensor
    grad_norm_sq: torch.Tensor
    seconds: torch.Tensor  # (steps+1,) cumulative wall-clock at each recorded point


def run(method: Method, task: tasks.TaskBatch, steps: int, callback=None) -> Trajectory:
    """Run `steps` inner steps without meta-gradients; record the loss before each step and after the last.

    callback(t, weights) is called before each step and at the end (e.g. a representation probe).
    Diverged tasks (non-finite loss) keep their non-finite values; statistics must mask them.
    """
    X_pinv = symmetry.pinv_full_rank(task.X)
    weights, state = list(task.weights), method.init_state(task.weights)
    losses, gns, secs = [], [], [0.0]
    start = time.perf_counter()
    with torch.no_grad():
        for t in range(steps):
            if callback is not None:
                callback(t, weights)
            res = inner_step(method, weights, state, task, X_pinv)
            weights, state = [w.detach() for w in res.weights], res.state
            losses.append(res.loss)
            gns.append(res.grad_norm_sq)
            secs.append(time.perf_counter() - start)
        L, grads = tasks.loss_and_grad(weights, task.X, task.Y)
        if callback is not None:
            callback(steps, weights)
    losses.append(L.detach())
    gns.append(symmetry.grad_norm_sq(grads))
    return Trajectory(torch.stack(losses), torch.stack(gns), torch.tensor(secs))
