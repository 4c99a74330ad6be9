"""What both studies use: the paper's bias-free LeakyReLU MLP as an `nn.Sequential`, and the loss and accuracy
of networks on a whole data split."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from metatele.tasks import mlp

__all__ = ["SLOPE", "make_mlp", "classification_metrics"]

SLOPE = 0.1  # the paper's LeakyReLU slope


def make_mlp(widths: Sequence[int], slope: float = SLOPE) -> nn.Sequential:
    """Bias-free Linear, (LeakyReLU, Linear)* with the given widths (d0, hidden…, classes)."""
    mods: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        if i:
            mods.append(nn.LeakyReLU(slope))
        mods.append(nn.Linear(a, b, bias=False))
    return nn.Sequential(*mods)


@torch.no_grad()
def classification_metrics(logits: Callable[[torch.Tensor], torch.Tensor], X: torch.Tensor, y: torch.Tensor,
                           chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy and accuracy of B networks on X (N, d0), y (N,), in chunks of samples:
    logits(X_chunk (n, d0)) → (B, classes, n). Two (B,) float64 tensors."""
    N, loss, correct = X.shape[0], 0.0, 0.0
    for i in range(0, N, chunk):
        Xc, yc = X[i:i + chunk], y[i:i + chunk]
        out = logits(Xc)
        loss = loss + mlp.cross_entropy_loss(out, yc.expand(out.shape[0], -1)).double() * Xc.shape[0]
        correct = correct + (out.argmax(1) == yc).sum(1).double()
    return loss / N, correct / N
