"""The suite's baselines with a learning rate per task, so that a whole lr grid runs as one batch (the lr grid is
laid out along the task dimension B). Adam and SGD-momentum are `metatele.methods.rules`; AdamW adds PyTorch's
decoupled weight decay (0.01) and RMSProp is PyTorch's (α 0.99, ε 1e-8, no momentum).
Shapes: weights[m], grads[m] (B, d_{m+1}, d_m[+1]); lr (B,).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from metatele.methods.base import Composed, Proposal, add_update, chain
from metatele.methods.rules import adam, momentum

__all__ = ["LR_GRID", "BASELINES", "rmsprop", "decoupled_decay", "make"]

LR_GRID = tuple(10 ** (k / 2) for k in range(-10, 1))   # 1e-5 … 1 in steps of ×10^0.5 (11 values)
BASELINES = ("adam", "adamw", "sgd-momentum", "rmsprop")
WEIGHT_DECAY = 0.01
RMS_ALPHA, RMS_EPS = 0.99, 1e-8


def _per_task(lr: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return lr.view(-1, *([1] * (like.dim() - 1)))


@dataclass
class rmsprop:
    """torch.optim.RMSprop: v ← α v + (1−α) g², update = lr · g / (√v + ε)."""

    lr: torch.Tensor

    def init(self, weights: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [torch.zeros_like(w) for w in weights]

    def propose(self, prop: Proposal, grads: Sequence[torch.Tensor], state: list[torch.Tensor], *,
                weights: Sequence[torch.Tensor]) -> tuple[Proposal, list[torch.Tensor]]:
        v = [RMS_ALPHA * s + (1 - RMS_ALPHA) * g * g for s, g in zip(state, grads)]
        return add_update(prop, [_per_task(self.lr, g) * g / (s.sqrt() + RMS_EPS) for g, s in zip(grads, v)]), v


@dataclass
class decoupled_decay:
    """AdamW's weight decay: update += lr · wd · W."""

    lr: torch.Tensor
    wd: float = WEIGHT_DECAY

    def init(self, weights: Sequence[torch.Tensor]) -> None:
        return None

    def propose(self, prop: Proposal, grads: Sequence[torch.Tensor], state: None, *,
                weights: Sequence[torch.Tensor]) -> tuple[Proposal, None]:
        return add_update(prop, [_per_task(self.lr, w) * self.wd * w for w in weights]), None


def make(kind: str, lr: torch.Tensor, ndim: int = 3) -> Composed:
    """Baseline `kind` (one of BASELINES) with per-task learning rates lr (B,), for weights of `ndim` dims."""
    per = lr.view(-1, *([1] * (ndim - 1)))
    transform = {"adam": lambda: adam(per),
                 "adamw": lambda: chain(adam(per), decoupled_decay(lr)),
                 "sgd-momentum": lambda: momentum(per, 0.9),
                 "rmsprop": lambda: rmsprop(lr)}[kind]()
    return Composed(kind, transform)
