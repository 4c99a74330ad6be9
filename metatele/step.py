"""The one inner step, shared by meta-training, evaluation and the `torch.optim` interface:

    gradient on the step's data → `apply_method` (the method's proposal, its update subtracted) → teleport.

`apply_method` is the only place where a method's update is applied: `inner_step` calls it after taking the task
gradient, and `metatele.optim.LearnedOptimizer` calls it on a model's parameters viewed as a batch of one task.
`rollout` runs `inner_step` for many steps without meta-gradients.
Shapes: weights[m] (B, d_{m+1}, d_m) for tasks (any (B, ...) for the update alone); losses (B,).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from metatele.methods.base import Method, Proposal, set_horizon
from metatele.tasks.base import TaskBatch
from metatele.teleport.action import grad_norm_sq

__all__ = ["StepResult", "apply_method", "inner_step", "Trajectory", "rollout"]


@dataclass
class StepResult:
    weights: list[torch.Tensor]
    state: Any
    loss: torch.Tensor            # (B,) loss at the weights the step started from, on the step's data
    grad_norm_sq: torch.Tensor    # (B,) ‖∇L‖² there
    proposal: Proposal


def apply_method(method: Method, weights: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], state: Any,
                 lr: float = 1.0) -> tuple[list[torch.Tensor], Any, Proposal]:
    """The method applied to (weights, grads, state), each tensor (B, ...): the weights minus lr × its update
    (lr = 1: exactly w − u), the method's new state, and its proposal (whose teleport, if any, is left to the
    caller: it needs data)."""
    prop, state = method.propose(weights, grads, state)
    if prop.update is None:
        return list(weights), state, prop
    if lr == 1.0:
        return [w - u for w, u in zip(weights, prop.update)], state, prop
    return [w - lr * u for w, u in zip(weights, prop.update)], state, prop


def inner_step(method: Method, weights: Sequence[torch.Tensor], state: Any, task: TaskBatch, step: int,
               differentiable: bool = False, second_order: bool = True) -> StepResult:
    """Inner step number `step` (0-based) on B tasks.

    differentiable: keep the graph so a meta-loss on later weights reaches the method's parameters.
    second_order: also differentiate through the inner gradients (the exact meta-gradient); False is
    the usual first-order L2O approximation (gradients enter the method as constants).
    """
    create = differentiable and second_order
    L, grads = task.loss_and_grad(weights, task.data(step), create_graph=create, retain_graph=differentiable)
    if not create:
        grads = [g.detach() for g in grads]
    new, state, prop = apply_method(method, weights, grads, state)
    if prop.teleport is not None:
        new = prop.teleport.apply(new, task, step)
    return StepResult(new, state, L if differentiable else L.detach(),
                      grad_norm_sq([g.detach() for g in grads]), prop)


@dataclass
class Trajectory:
    """Per-step records of a run on B tasks: losses and grad norms (steps+1, B), seconds per step."""

    loss: torch.Tensor
    grad_norm_sq: torch.Tensor
    seconds: torch.Tensor  # (steps+1,) cumulative wall-clock at each recorded point


def rollout(method: Method, task: TaskBatch, steps: int,
            callback: Callable[[int, list[torch.Tensor]], None] | None = None) -> Trajectory:
    """Run `steps` inner steps without meta-gradients; record the loss before each step and after the last.

    callback(t, weights) is called before each step and at the end (e.g. a representation probe).
    Diverged tasks (non-finite loss) keep their non-finite values; statistics must mask them.
    A method with progress features is told that the run takes `steps` steps (`set_horizon`).
    """
    set_horizon(method, max(steps, 1))
    weights = task.init_weights()
    state = method.init_state(weights)
    losses, gns, secs = [], [], [0.0]
    start = time.perf_counter()
    with torch.no_grad():
        for t in range(steps):
            if callback is not None:
                callback(t, weights)
            res = inner_step(method, weights, state, task, t)
            weights, state = [w.detach() for w in res.weights], res.state
            losses.append(res.loss)
            gns.append(res.grad_norm_sq)
            secs.append(time.perf_counter() - start)
        L, grads = task.loss_and_grad(weights, task.data(steps))
        if callback is not None:
            callback(steps, weights)
    losses.append(L.detach())
    gns.append(grad_norm_sq(grads))
    return Trajectory(torch.stack(losses), torch.stack(gns), torch.tensor(secs))
