"""Methods as composed transforms: an update rule chained with a teleport policy.

Each step a method reads the gradients at the current weights and returns a `Proposal`: what to subtract
(`update`) and how to teleport afterwards (`teleport`, any object with an `apply`). `metatele.step` is the
one place that applies a proposal. Transforms follow optax/torchopt: `init(weights) → state` and
`propose(proposal, grads, state, *, weights) → (proposal, state)`, composed with `chain`. Update rules add
their step to the proposal's update, so `chain(sgd(lr), learned_residual)` sums two rules; teleport
policies set its teleport. Shapes: weights[m] and grads[m] (B, d_{m+1}, d_m).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

if TYPE_CHECKING:
    from metatele.tasks.base import TaskBatch

__all__ = ["Proposal", "Teleport", "Transform", "Method", "Composed", "chain", "identity", "add_update",
           "DEFAULT_HORIZON", "Horizon", "set_horizon", "checked_horizon", "per_task"]

DEFAULT_HORIZON = 1000  # T of a run whose length is not given (the longest horizon the learned methods train on)

Tensors = list[torch.Tensor]


class Teleport(Protocol):
    """A teleport to apply after the update, computed from the start-of-step gradients."""

    def apply(self, weights: Tensors, task: TaskBatch, step: int) -> Tensors: ...


@dataclass
class Proposal:
    """What a method wants done this step.

    update: subtracted from the weights (None: no local update).
    teleport: applied to the updated weights (None: no teleport).
    info: per-task diagnostics for logging, e.g. "lr" or "teleport_magnitude", each (B,).
    """

    update: Tensors | None = None
    teleport: Teleport | None = None
    info: dict[str, torch.Tensor] = field(default_factory=dict)


def per_task(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """One value per task, (B,) → (B, 1, …, 1), broadcastable against `like` (B, ...)."""
    return x.view(-1, *([1] * (like.dim() - 1)))


def add_update(prop: Proposal, update: Tensors) -> Proposal:
    """The proposal with `update` added to its update (the update itself if there was none)."""
    total = update if prop.update is None else [a + b for a, b in zip(prop.update, update)]
    return replace(prop, update=total)


@runtime_checkable
class Transform(Protocol):
    def init(self, weights: Sequence[torch.Tensor]) -> Any: ...

    def propose(self, prop: Proposal, grads: Sequence[torch.Tensor], state: Any, *,
                weights: Sequence[torch.Tensor]) -> tuple[Proposal, Any]: ...


@runtime_checkable
class Method(Protocol):
    """What `metatele.step.inner_step` runs: a name, a state initializer and a proposer."""

    name: str

    def init_state(self, weights: Sequence[torch.Tensor]) -> Any: ...

    def propose(self, weights: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], state: Any
                ) -> tuple[Proposal, Any]: ...


@dataclass
class _Chain:
    transforms: tuple[Transform, ...]

    def init(self, weights: Sequence[torch.Tensor]) -> tuple[Any, ...]:
        return tuple(t.init(weights) for t in self.transforms)

    def propose(self, prop: Proposal, grads: Sequence[torch.Tensor], state: tuple[Any, ...], *,
                weights: Sequence[torch.Tensor]) -> tuple[Proposal, tuple[Any, ...]]:
        new_state = []
        for t, s in zip(self.transforms, state):
            prop, s = t.propose(prop, grads, s, weights=weights)
            new_state.append(s)
        return prop, tuple(new_state)


class identity:
    """The transform that proposes nothing (for example, teleport off)."""

    def init(self, weights: Sequence[torch.Tensor]) -> None:
        return None

    def propose(self, prop: Proposal, grads: Sequence[torch.Tensor], state: None, *,
                weights: Sequence[torch.Tensor]) -> tuple[Proposal, None]:
        return prop, state


def chain(*transforms: Transform) -> Transform:
    """Apply transforms in order. chain() is `identity()`; chain(t) is t itself.

    >>> from metatele.methods.rules import sgd
    >>> t = sgd(0.1)
    >>> chain(t) is t
    True
    """
    if not transforms:
        return identity()
    if len(transforms) == 1:
        return transforms[0]
    return _Chain(tuple(transforms))


@dataclass
class Horizon:
    """T, the number of steps of the run a method is making, for transforms that read it (a learned method's
    progress features). A method's transforms share one Horizon; `set_horizon` sets it before a run, unless
    `pinned` (an ablation that hides the run's length from the method). It belongs to the method object: runs of
    different lengths at the same time need their own copies of the method."""

    steps: float = DEFAULT_HORIZON
    pinned: bool = False


def set_horizon(method: Method, steps: float) -> None:
    """Tell `method` that its next run takes `steps` steps (a method without a `clock` Horizon, or with a pinned
    one, ignores it)."""
    clock = getattr(method, "clock", None)
    if isinstance(clock, Horizon) and not clock.pinned:
        clock.steps = checked_horizon(steps)


def checked_horizon(steps: float) -> float:
    """`steps` as a horizon T (a finite number ≥ 1), or ValueError."""
    if isinstance(steps, bool) or not isinstance(steps, (int, float)) or not 1 <= steps < float("inf"):
        raise ValueError(f"a run's horizon must be a finite number of steps ≥ 1, got {steps!r}")
    return float(steps)


@dataclass
class Composed:
    """A named method made of one transform (usually `chain(update rule, teleport policy)`); `clock`, the
    Horizon its transforms read, if any."""

    name: str
    transform: Transform
    hparams: dict[str, Any] = field(default_factory=dict)
    clock: Horizon | None = None

    def init_state(self, weights: Sequence[torch.Tensor]) -> Any:
        return self.transform.init(weights)

    def propose(self, weights: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], state: Any
                ) -> tuple[Proposal, Any]:
        return self.transform.propose(Proposal(), grads, state, weights=weights)
