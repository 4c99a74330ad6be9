"""The closed-form steepest-ascent direction of ‖∇L‖² (`metatele.teleport.ascent.steepest_direction`) against
its definition, differentiated by autograd through the exact group action (its QR and pseudo-inverse solves):
the same value to 1e-10 relative in float64, the same derivative in the weights, and the same invalid tasks."""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch

from metatele.errors import RankDeficientError
from metatele.tasks import RegressionFamily, mlp
from metatele.tasks.base import Batch, TeleportData, loss_and_grad
from metatele.teleport.action import grad_norm_sq, pinv_full_rank, teleport, with_ones
from metatele.teleport.ascent import steepest_direction


@dataclass
class Tasks:
    """Minimal regression task batch on (optionally augmented) weights: squared loss of the MLP on X."""

    X: torch.Tensor
    Y: torch.Tensor
    weights: list[torch.Tensor]
    bias: bool
    activation: mlp.LeakyReLU = field(default_factory=mlp.LeakyReLU)

    def loss(self, weights, data):
        return mlp.squared_loss(mlp.forward(weights, data.X, self.activation, self.bias), data.Y)

    def loss_and_grad(self, weights, data, *, create_graph=False, retain_graph=False):
        return loss_and_grad(self.loss, weights, data, create_graph=create_graph, retain_graph=retain_graph)

    def teleport_data(self, step=0):
        return TeleportData(Batch(self.X, self.Y), pinv_full_rank(with_ones(self.X) if self.bias else self.X))


def make(widths, n, bias, B=3):
    base = RegressionFamily(widths, n).sample(list(range(B)), dtype=torch.float64)
    gen = torch.Generator().manual_seed(7)
    W = [w.clone() for w in base.weights]
    if bias:
        W = [torch.cat([w, 0.3 * torch.randn(B, w.shape[1], 1, generator=gen, dtype=w.dtype)], -1) for w in W]
    return Tasks(base.X, base.Y, W, bias)


def by_autograd(weights, task, data, skip_invalid=False, differentiable=False):
    """The definition: ∂‖∇L(g·W)‖²/∂T at T = 0, through the exact action (minimum-norm formula)."""
    T = [torch.zeros(w.shape[0], w.shape[1], w.shape[1], dtype=w.dtype, requires_grad=True) for w in weights[:-1]]
    Wt = teleport(weights, data.batch.X, T, None, act=task.activation, X_pinv=data.X_pinv, bias=task.bias,
                  skip_invalid=skip_invalid)
    _, grads = task.loss_and_grad(Wt, data.batch, create_graph=True)
    G = torch.autograd.grad(grad_norm_sq(grads).sum(), T, create_graph=differentiable)
    return [g.nan_to_num() if skip_invalid else g for g in G]


def rel(a, b):
    return float((a - b).norm() / b.norm())


CASES = [((6, 8, 7, 5), 5), ((6, 8, 7, 7, 4), 5), ((6, 6, 6, 4), 6), ((6, 6, 6, 6, 4), 6)]  # 2 and 3 hidden layers;
# n < every layer input width (the action then projects W onto the input's row space) or square inputs


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("widths,n", CASES)
def test_closed_form_equals_autograd_through_the_action(widths, n, bias):
    task = make(widths, n + bias if n == widths[0] else n, bias)  # square: n = d + 1 rows of [h; 1]
    data = task.teleport_data()
    G = steepest_direction(task.weights, task, data)
    ref = by_autograd(task.weights, task, data)
    assert len(G) == len(widths) - 2
    for g, r in zip(G, ref):
        assert g.shape == r.shape and rel(g, r) <= 1e-10, rel(g, r)
        assert float(r.norm()) > 1e-3  # not a trivial zero


@pytest.mark.parametrize("bias", [False, True])
def test_meta_derivative_in_the_weights_equals_autograd(bias):
    task = make((6, 8, 7, 7, 4), 5, bias)
    data = task.teleport_data()
    gen = torch.Generator().manual_seed(3)
    R = [torch.randn(w.shape[0], w.shape[1], w.shape[1], generator=gen, dtype=w.dtype) for w in task.weights[:-1]]

    def derivative(fn):
        W = [w.clone().requires_grad_() for w in task.weights]
        G = fn(W)
        return torch.autograd.grad(sum((g * r).sum() for g, r in zip(G, R)), W)

    ours = derivative(lambda W: steepest_direction(W, task, data, differentiable=True))
    ref = derivative(lambda W: by_autograd(W, task, data, differentiable=True))
    for a, b in zip(ours, ref):
        assert rel(a, b) <= 1e-8, rel(a, b)


def test_detached_unless_differentiable():
    task = make((6, 8, 7, 5), 5, False)
    W = [w.clone().requires_grad_() for w in task.weights]
    assert not any(g.requires_grad for g in steepest_direction(W, task, task.teleport_data()))


def test_invalid_tasks_get_zero_and_the_others_their_direction():
    task = make((6, 8, 7, 7, 4), 5, False, B=4)
    task.weights[0][1] = task.weights[0][1, :1]  # task 1: every first-layer row equal → its layer-2 input has rank 1
    data = task.teleport_data()
    with pytest.raises(RankDeficientError):
        steepest_direction(task.weights, task, data)
    G = steepest_direction(task.weights, task, data, skip_invalid=True)
    ref = by_autograd(task.weights, task, data, skip_invalid=True)
    for g, r in zip(G, ref):
        assert torch.equal(g[1], torch.zeros_like(g[1])) and torch.equal(r[1], torch.zeros_like(r[1]))
        keep = [0, 2, 3]
        assert rel(g[keep], r[keep]) <= 1e-10


def test_float32_batched_matches_float64():
    task = make((6, 8, 7, 5), 5, False, B=5)
    G64 = steepest_direction(task.weights, task, task.teleport_data())
    t32 = Tasks(task.X.float(), task.Y.float(), [w.float() for w in task.weights], False)
    G32 = steepest_direction(t32.weights, t32, t32.teleport_data())
    for a, b in zip(G32, G64):
        assert rel(a.double(), b) <= 1e-3
