"""Non-learned methods, in the same `Method` protocol as the learned ones:
GD, Adam, and GD + gradient-ascent teleport."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from metatele.step import Proposal

PAPER_GD_LR = 3e-4


@dataclass
class GD:
    lr: float = PAPER_GD_LR
    name: str = "gd"

    def init_state(self, weights: Sequence[torch.Tensor]) -> None:
        return None

    def propose(self, weights, grads, state):
        return Proposal(update=[self.lr * g for g in grads]), state


@dataclass
class Adam:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    name: str = "adam"

    def init_state(self, weights: Sequence[torch.Tensor]):
        return (0, [torch.zeros_like(w) for w in weights], [torch.zeros_like(w) for w in weights])

    def propose(self, weights, grads, state):
        t, m, v = state
        b1, b2 = self.betas
        t += 1
        m = [b1 * mi + (1 - b1) * g for mi, g in zip(m, grads)]
        v = [b2 * vi + (1 - b2) * g * g for vi, g in zip(v, grads)]
        upd = [self.lr * (mi / (1 - b1**t)) / ((vi / (1 - b2**t)).sqrt() + self.eps) for mi, vi in zip(m, v)]
        return Proposal(update=upd), (t, m, v)


@dataclass
class GDTeleport:
    """GD with a gradient-ascent teleport after the update at steps 0, every, 2·every, ... (< until)."""

    lr: float = PAPER_GD_LR
    every: int = 10
    until: int = 50
    ascent_steps: int = 10
    name: str = "gd-teleport"

    def init_state(self, weights: Sequence[torch.Tensor]) -> int:
        return 0

    def propose(self, weights, grads, t):
        tele = t % self.every == 0 and t < self.until
        return Proposal(update=[self.lr * g for g in grads], ascent_steps=self.ascent_steps if tele else 0), t + 1
