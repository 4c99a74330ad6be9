"""Update rules as transforms: each adds its step to the proposal's update (W ← W − update).
Shapes: grads[m] (B, d_{m+1}, d_m); per-task state tensors keep that layout. A learning rate is a float, or a
tensor (B,) of one lr per task (`metatele.evaluation.compare.tune` runs a whole lr grid as one batch); a task's
update is the same to the bit either way."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from metatele.methods.base import Proposal, add_update, per_task

__all__ = ["sgd", "momentum", "adam", "AdamState"]

LR = float | torch.Tensor  # one lr, or one per task (B,)


def _scaled(lr: LR, x: torch.Tensor) -> torch.Tensor:
    """lr · x for x (B, ...); a per-task lr (B,) is broadcast over each task's entries."""
    return per_task(lr, x) * x if isinstance(lr, torch.Tensor) else lr * x


@dataclass
class sgd:
    """Plain gradient descent: update = lr · g."""

    lr: LR

    def init(self, weights: Sequence[torch.Tensor]) -> None:
        return None

    def propose(self, prop: Proposal, grads: Sequence[torch.Tensor], state: None, *,
                weights: Sequence[torch.Tensor]) -> tuple[Proposal, None]:
        return add_update(prop, [_scaled(self.lr, g) for g in grads]), state


@dataclass
class momentum:
    """Heavy-ball SGD (as torch.optim.SGD): b ← μ b + g, update = lr · b."""

    lr: LR
    mu: float = 0.9

    def init(self, weights: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [torch.zeros_like(w) for w in weights]

    def propose(self, prop: Proposal, grads: Sequence[torch.Tensor], state: list[torch.Tensor], *,
                weights: Sequence[torch.Tensor]) -> tuple[Proposal, list[torch.Tensor]]:
        buf = [self.mu * b + g for b, g in zip(state, grads)]
        return add_update(prop, [_scaled(self.lr, b) for b in buf]), buf


@dataclass
class AdamState:
    count: int
    mu: list[torch.Tensor]
    nu: list[torch.Tensor]


@dataclass
class adam:
    """Adam (Kingma & Ba) with bias correction; `epsilon` is added to the root of the second moment."""

    lr: LR = 1e-3
    b1: float = 0.9
    b2: float = 0.999
    epsilon: float = 1e-8

    def init(self, weights: Sequence[torch.Tensor]) -> AdamState:
        return AdamState(0, [torch.zeros_like(w) for w in weights], [torch.zeros_like(w) for w in weights])

    def propose(self, prop: Proposal, grads: Sequence[torch.Tensor], state: AdamState, *,
                weights: Sequence[torch.Tensor]) -> tuple[Proposal, AdamState]:
        t = state.count + 1
        m = [self.b1 * mi + (1 - self.b1) * g for mi, g in zip(state.mu, grads)]
        v = [self.b2 * vi + (1 - self.b2) * g * g for vi, g in zip(state.nu, grads)]
        upd = [_scaled(self.lr, mi / (1 - self.b1**t)) / ((vi / (1 - self.b2**t)).sqrt() + self.epsilon)
               for mi, vi in zip(m, v)]
        return add_update(prop, upd), AdamState(t, m, v)
