"""The task protocol: a family samples batches of B tasks from integer seeds.

A task batch holds B independent MLP training problems of one shape. It gives its initial weights,
the data each inner step trains on, the loss and its gradient on that data, and which parameter-space
symmetry it supports. `metatele.step` and the meta-trainer see tasks only through this protocol.
A batch may also offer `tile(copies)`, the same B tasks copies times over (copies·B tasks, task j·B + i is
task i), with which `metatele.evaluation.compare.tune` runs a whole lr grid as one batch (the families' batches do).
Shapes: weights[m] (B, d_{m+1}, d_m); data X (B, d0, n); losses (B,).
"""
from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from metatele.tasks.mlp import LeakyReLU

__all__ = ["Symmetry", "Batch", "TeleportData", "TaskBatch", "TaskFamily", "loss_and_grad", "has_bias"]


class Symmetry(str, enum.Enum):
    """What teleport a task supports."""

    GL = "gl"                # the exact data-dependent GL(k) action on its teleport data (and rescaling)
    RESCALE = "rescale"      # positive diagonal rescaling only (exact for any data)
    NONE = "none"


@dataclass
class Batch:
    """Data of B tasks for one inner step. X (B, d0, n); Y (B, dL, n) targets or (B, n) class labels."""

    X: torch.Tensor
    Y: torch.Tensor


@dataclass
class TeleportData:
    """Data on which the exact GL action keeps the loss: batch.X (B, d0, n) with n ≤ every hidden layer's
    input width, and its cached pseudo-inverse X⁺ (B, n, d0) when the data is fixed (else None)."""

    batch: Batch
    X_pinv: torch.Tensor | None = None


@runtime_checkable
class TaskBatch(Protocol):
    """B training problems of one shape (see the module docstring)."""

    seeds: list[int]
    activation: LeakyReLU
    symmetry: Symmetry

    @property
    def widths(self) -> tuple[int, ...]: ...

    def init_weights(self) -> list[torch.Tensor]: ...

    def data(self, step: int) -> Batch:
        """The (mini-)batch that inner step `step` (0-based) trains on."""
        ...

    def teleport_data(self, step: int) -> TeleportData:
        """The data a teleport at inner step `step` must keep the loss on."""
        ...

    def loss(self, weights: Sequence[torch.Tensor], data: Batch) -> torch.Tensor: ...

    def loss_and_grad(self, weights: Sequence[torch.Tensor], data: Batch, *, create_graph: bool = False,
                      retain_graph: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]: ...

    def to(self, device: torch.device | str) -> TaskBatch: ...


class TaskFamily(Protocol):
    """A distribution over tasks; `sample` is deterministic in the seeds. Registered by name in
    `metatele.tasks.registry` (with classmethods `from_dict` and `from_config`, see there)."""

    name: str

    @property
    def widths(self) -> tuple[int, ...]:
        """The shape of every task it samples; () if the shape varies from batch to batch."""
        ...

    @property
    def symmetry(self) -> Symmetry:
        """The symmetry that every task it samples supports."""
        ...

    def member(self, seed: int) -> TaskFamily:
        """The single-shape family that a batch whose first seed is `seed` samples from (itself, for a family of
        one shape), so that the ranks of a distributed run sample their slices of one batch alike."""
        ...

    def sample(self, seeds: Sequence[int], *, dtype: torch.dtype = torch.float32,
               device: torch.device | str = "cpu") -> TaskBatch: ...

    def to_dict(self) -> dict[str, Any]:
        """JSON description with its registered "name" (stored in checkpoints; `metatele.tasks.family_from_dict`
        rebuilds it)."""
        ...


def loss_and_grad(loss: Any, weights: Sequence[torch.Tensor], data: Batch, *, create_graph: bool = False,
                  retain_graph: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Per-task loss (B,) from `loss(weights, data)` and its gradients, one (B, d_out, d_in) tensor per weight.

    Tasks are independent, so the gradient of the summed loss is each task's own gradient.
    create_graph: the gradients are differentiable; retain_graph: the loss stays differentiable.
    """
    with torch.enable_grad():
        ws = [w if w.requires_grad else w.detach().requires_grad_() for w in weights]
        L = loss(ws, data)
        grads = torch.autograd.grad(L.sum(), ws, create_graph=create_graph, retain_graph=retain_graph or create_graph)
    return L, list(grads)


def has_bias(task: Any) -> bool:
    """Whether a task's weights are augmented, [W_m b_m] (B, d_{m+1}, d_m + 1) acting on [h; 1]: a task says so with
    a true `bias` attribute (`metatele.nn.SequentialTask` of a model with biases); the families are bias-free."""
    return bool(getattr(task, "bias", False))
