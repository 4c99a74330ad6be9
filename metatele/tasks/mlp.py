"""Bias-free MLPs batched over tasks: the activation, the forward pass and the two losses.

Shapes carry a leading task dimension B: X (B, d0, n) with samples as columns, weights[m] (B, d_{m+1}, d_m),
outputs (B, dL, n). h_0 = X, h_m = σ(W_m h_{m-1}) for m = 1..L-1, f(X) = W_L h_{L-1}. With bias=True each
weight is augmented, [W_m b_m] (B, d_{m+1}, d_m + 1), and acts on [h_{m-1}; 1].
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["LeakyReLU", "activations", "forward", "squared_loss", "cross_entropy_loss"]


@dataclass(frozen=True)
class LeakyReLU:
    """σ(z) = max(z, slope·z) with 0 < slope < 1; invertible, σ⁻¹ = LeakyReLU(1/slope)."""

    slope: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 < self.slope < 1.0:
            raise ValueError(f"LeakyReLU slope must be in (0, 1) to be invertible, got {self.slope}")

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(z, self.slope)

    def inverse(self, a: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(a, 1.0 / self.slope)


def _linear(W: torch.Tensor, h: torch.Tensor, bias: bool) -> torch.Tensor:
    """W h, or [W b][h; 1] = W h + b for augmented weights."""
    if bias:
        return torch.baddbmm(W[..., -1:], W[..., :-1], h)
    return torch.bmm(W, h)


def activations(weights: Sequence[torch.Tensor], X: torch.Tensor, act: LeakyReLU, bias: bool = False
                ) -> list[torch.Tensor]:
    """Post-activation hidden layers [h_1, ..., h_{L-1}], each (B, d_m, n)."""
    hs, h = [], X
    for W in weights[:-1]:
        h = act(_linear(W, h, bias))
        hs.append(h)
    return hs


def forward(weights: Sequence[torch.Tensor], X: torch.Tensor, act: LeakyReLU, bias: bool = False) -> torch.Tensor:
    """Network output W_L h_{L-1} (+ b_L), shape (B, dL, n)."""
    h = X
    for W in weights[:-1]:
        h = act(_linear(W, h, bias))
    return _linear(weights[-1], h, bias)


def squared_loss(out: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """½‖Y − out‖_F² per task (a sum over entries, as in the paper); out, Y (B, dL, n) → (B,)."""
    return 0.5 * (Y - out).pow(2).sum(dim=(1, 2))


def cross_entropy_loss(out: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the n samples per task; out (B, C, n) logits, labels (B, n) → (B,)."""
    return F.cross_entropy(out, labels, reduction="none").mean(dim=1)
