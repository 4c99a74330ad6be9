"""A learned optimizer on a user's own nn.Sequential: same trajectory as the batched task, weights written back in
place, learning happens, size-agnostic shipped optimizers run on a shape they never saw, biases are refused."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import metatele
from metatele import step
from metatele.learned.apply import optimize_, sequential_task
from metatele.methods import baseline
from metatele.teleport.sequential import ArchitectureError


def _mlp(*widths: int, bias: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        layers += ([nn.LeakyReLU(0.1)] if i else []) + [nn.Linear(a, b, bias=bias)]
    return nn.Sequential(*layers)


def _data(n: int, d: int, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    X = torch.randn(n, d, generator=g)
    return X, (X[:, :classes] @ torch.randn(classes, classes, generator=g)).argmax(1)


def test_optimize_trains_the_model_in_place_along_the_batched_trajectory():
    model = _mlp(12, 16, 10, 4)
    X, y = _data(64, 12, 4)
    method = baseline("gd-teleport", lr=0.5)  # any Method: here GD with gradient-ascent teleports
    task = sequential_task(model, X, y, batch_size=64)
    ref = step.rollout(method, task, 30)
    before = F.cross_entropy(model(X), y).item()
    traj = optimize_(model, method, X, y, 30, batch_size=64)
    torch.testing.assert_close(traj.loss, ref.loss)
    after = F.cross_entropy(model(X), y).item()
    assert after == pytest.approx(float(traj.loss[-1, 0]), rel=1e-5)  # full batch: the model holds the final weights
    assert after < 0.9 * before


def test_shipped_size_agnostic_optimizer_runs_on_an_unseen_shape_with_the_squared_loss():
    model = _mlp(10, 40, 40, 5)  # widths 40 are outside the 8..32 of meta-training
    g = torch.Generator().manual_seed(2)
    X, Y = torch.rand(10, 10, generator=g), torch.rand(10, 5, generator=g)
    opt = metatele.load_pretrained("any-update-tele")
    traj = optimize_(model, opt, X, Y, 100, loss="squared")
    assert torch.isfinite(traj.loss).all() and traj.loss[-1, 0] < 0.5 * traj.loss[0, 0]
    assert 0.5 * (Y - model(X)).pow(2).sum().item() == pytest.approx(float(traj.loss[-1, 0]), rel=1e-4)


def test_networks_with_biases_and_bad_data_are_refused():
    X, y = _data(32, 12, 4)
    with pytest.raises(ArchitectureError, match="bias-free"):
        sequential_task(_mlp(12, 16, 4, bias=True), X, y)
    with pytest.raises(ValueError, match="X must be"):
        sequential_task(_mlp(12, 16, 4), X[:, :5], y)
