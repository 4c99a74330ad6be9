"""A user's nn.Sequential MLP as a batch of one task (the `metatele.tasks.TaskBatch` protocol).

`SequentialTask(model, X, y, loss=...)` reads the model's weights once (augmented [W b] with biases) and offers
the data, loss and gradient the shared inner step (`metatele.step`) needs; `write_(weights)` puts weights back
into the model. Data and targets come from a `ClassificationTasks` (cross-entropy on seeded mini-batches) or a
`RegressionTasks` (½‖y − f(X)‖², full batch), whose loss is evaluated here with the model's biases.
All inputs are checked before anything is built (`check_inputs`): ValueError names what is wrong.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from metatele.nn.chains import Chain, inspect_mlp
from metatele.tasks import mlp
from metatele.tasks.base import Batch, Symmetry, TeleportData, loss_and_grad
from metatele.tasks.classification import ClassificationTasks, teleport_batch_for
from metatele.tasks.regression import RegressionTasks
from metatele.teleport.action import pinv_full_rank, with_ones

__all__ = ["LOSSES", "SequentialTask", "check_inputs"]

LOSSES = ("cross_entropy", "squared")
Loss = Literal["cross_entropy", "squared"]


def check_inputs(chain: Chain, X: torch.Tensor, y: torch.Tensor | None, loss: str = "cross_entropy") -> None:
    """ValueError unless X is a finite (n, d0) tensor, y (if given) fits it (class indices 0..dL−1 of length n for
    cross-entropy, finite (n, dL) targets for the squared loss) and the chain's weights are finite."""
    d0, dL = chain.widths[0], chain.widths[-1]
    if not isinstance(X, torch.Tensor) or X.dim() != 2 or X.shape[1] != d0:
        shape = tuple(X.shape) if isinstance(X, torch.Tensor) else type(X).__name__
        hint = " (it looks transposed: pass X.T)" if isinstance(X, torch.Tensor) and X.dim() == 2 \
            and X.shape[0] == d0 else ""
        raise ValueError(f"X must be (n, {d0}): one sample per row, {d0} features as the first Linear takes; "
                         f"got {shape}{hint}")
    if X.shape[0] == 0:
        raise ValueError("X has no samples")
    if not torch.isfinite(X).all():
        raise ValueError("X holds NaN or inf")
    for name, lin in zip(chain.names, chain.linears):
        if not all(bool(torch.isfinite(p).all()) for p in lin.parameters()):
            raise ValueError(f"the weights of layer {name} hold NaN or inf")
    if y is None:
        return
    n = X.shape[0]
    if loss == "squared":
        if y.shape != (n, dL):
            raise ValueError(f"y must be ({n}, {dL}) targets for the squared loss, got {tuple(y.shape)}")
        if not torch.isfinite(y).all():
            raise ValueError("y holds NaN or inf")
        return
    if y.dim() != 1 or y.shape[0] != n:
        raise ValueError(f"y must be ({n},) class indices, one per row of X, got {tuple(y.shape)}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        if not torch.isfinite(y).all():
            raise ValueError("y holds NaN or inf")
        raise ValueError(f"y must hold integer class indices for cross-entropy, got dtype {y.dtype}")
    if n and (int(y.min()) < 0 or int(y.max()) >= dL):
        raise ValueError(f"class labels must be in 0..{dL - 1} (the model has {dL} outputs), "
                         f"got {int(y.min())}..{int(y.max())}")


@dataclass
class SequentialTask:
    """The task of training `chain`'s model on (X, y), as a batch of one (B = 1), from its current weights.

    weights[m] (1, d_{m+1}, d_m [+ 1]); data X (1, d0, n). `bias` says the weights are augmented (the teleports
    of `metatele.methods` read it through `metatele.tasks.base.has_bias`)."""

    chain: Chain
    inner: ClassificationTasks | RegressionTasks
    loss_kind: str
    _pinv: torch.Tensor | None = field(default=None, repr=False)

    @classmethod
    def of(cls, model: nn.Module, X: torch.Tensor, y: torch.Tensor, *, loss: Loss = "cross_entropy",
           batch_size: int | None = None, teleport_batch: int | None = None, seed: int = 0,
           purpose: str = "the update") -> SequentialTask:
        """Build it, after checking the model (`inspect_mlp`; `purpose` names who cannot use a bad layer) and the
        data (`check_inputs`). cross_entropy: inner step t trains on mini-batch t of a seeded shuffle of the n
        samples (batch_size, default min(n, 128)); teleports keep the loss on its first teleport_batch samples
        (default `teleport_batch_for`'s). squared: full batch."""
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
        chain = inspect_mlp(model, purpose)
        W = chain.get_weights()
        check_inputs(chain, X, y, loss)
        X = X.to(W[0])
        if loss == "squared":
            inner: ClassificationTasks | RegressionTasks = RegressionTasks(X.T[None], y.to(W[0]).T[None], W, [seed],
                                                                            chain.act)
            return cls(chain, inner, loss)
        n = X.shape[0]
        b = min(n, 128) if batch_size is None else batch_size
        if not 0 < b <= n:
            raise ValueError(f"need 0 < batch_size ≤ n = {n}, got {b}")
        w = chain.widths  # a bias adds one row to every hidden layer's input
        tb = teleport_batch_for((*(d + int(chain.bias) for d in w[:-2]), *w[-2:]), b, teleport_batch)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[None].to(W[0].device)
        return cls(chain, ClassificationTasks(X, y.to(W[0].device, torch.long), order, W, [seed], b, tb, chain.act),
                   loss)

    @property
    def seeds(self) -> list[int]:
        return self.inner.seeds

    @property
    def activation(self) -> mlp.LeakyReLU:
        return self.chain.act

    @property
    def bias(self) -> bool:
        return self.chain.bias

    @property
    def symmetry(self) -> Symmetry:
        return self.inner.symmetry

    @property
    def widths(self) -> tuple[int, ...]:
        return self.chain.widths

    def init_weights(self) -> list[torch.Tensor]:
        return self.inner.init_weights()

    def data(self, step: int) -> Batch:
        return self.inner.data(step)

    def teleport_data(self, step: int) -> TeleportData:
        if not self.bias or self.loss_kind == "cross_entropy":  # mini-batches: X⁺ of [X; 1] is taken per teleport
            return self.inner.teleport_data(step)
        if self._pinv is None:  # the full batch, fixed: cache the pseudo-inverse of [X; 1]
            self._pinv = pinv_full_rank(with_ones(self.inner.X))
        return TeleportData(self.inner.data(step), self._pinv)

    def loss(self, weights: Sequence[torch.Tensor], data: Batch) -> torch.Tensor:
        out = mlp.forward(weights, data.X, self.chain.act, self.bias)
        return mlp.squared_loss(out, data.Y) if self.loss_kind == "squared" else mlp.cross_entropy_loss(out, data.Y)

    def loss_and_grad(self, weights: Sequence[torch.Tensor], data: Batch, *, create_graph: bool = False,
                      retain_graph: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return loss_and_grad(self.loss, weights, data, create_graph=create_graph, retain_graph=retain_graph)

    def to(self, device: torch.device | str) -> SequentialTask:
        return SequentialTask(self.chain, self.inner.to(device), self.loss_kind)

    def write_(self, weights: Sequence[torch.Tensor]) -> None:
        """Put weights (1, d_out, d_in [+ 1]) into the model's Linear layers, in place."""
        self.chain.set_weights_(weights)
