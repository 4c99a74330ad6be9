"""A learned optimizer on a user's own nn.Sequential: same trajectory as the batched task, weights written back in
place, learning happens, size-agnostic shipped optimizers run on a shape they never saw and on networks with
biases, a fixed-size one on the wrong shape is refused by name, and the divergence guard keeps the last weights
with a finite loss."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import metatele
from metatele import step
from metatele.learned.apply import DivergenceWarning, optimize_, sequential_task
from metatele.learned.coordinatewise import SteepestTeleport
from metatele.methods import AscentTeleport, LieTeleport, baseline
from metatele.nn import TeleportWarning


def _mlp(*widths: int, bias: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        layers += ([nn.LeakyReLU(0.1)] if i else []) + [nn.Linear(a, b, bias=bias)]
    return nn.Sequential(*layers)


def _data(n: int, d: int, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    X = torch.randn(n, d, generator=g)
    return X, (X[:, :classes] @ torch.randn(classes, classes, generator=g)).argmax(1)


@pytest.mark.parametrize("bias", [False, True])
def test_optimize_trains_the_model_in_place_along_the_batched_trajectory(bias):
    model = _mlp(12, 16, 10, 4, bias=bias)
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


@pytest.mark.parametrize("bias", [False, True])
def test_shipped_size_agnostic_optimizer_runs_on_an_unseen_shape_with_the_squared_loss(bias):
    """Biases go through the augmented weights [W b], to which the per-coordinate rule applies as to any weight."""
    model = _mlp(10, 40, 40, 5, bias=bias)  # widths 40 are outside the 8..32 of meta-training
    g = torch.Generator().manual_seed(2)
    X, Y = torch.rand(10, 10, generator=g), torch.rand(10, 5, generator=g)
    opt = metatele.load_pretrained("any-update")
    traj = optimize_(model, opt, X, Y, 100, loss="squared")
    assert torch.isfinite(traj.loss).all() and traj.loss[-1, 0] < 0.5 * traj.loss[0, 0]
    assert 0.5 * (Y - model(X)).pow(2).sum().item() == pytest.approx(float(traj.loss[-1, 0]), rel=1e-4)


@pytest.mark.parametrize("loss", ["squared", "cross_entropy"])
def test_learned_and_ascent_teleports_keep_the_loss_of_a_task_with_biases(loss):
    """The teleports the learned methods propose (steepest, bilinear's LieTeleport) and gradient ascent act on the
    augmented weights of a model with biases and keep the loss on the teleport data (float64)."""
    torch.manual_seed(0)
    model = _mlp(10, 12, 12, 5, bias=True).double()
    X = torch.rand(10, 10, dtype=torch.float64)
    y = torch.rand(10, 5, dtype=torch.float64) if loss == "squared" else torch.randint(0, 5, (10,))
    task = sequential_task(model, X, y, loss=loss, batch_size=10)
    W = task.init_weights()
    data = task.teleport_data(0)
    L0 = float(task.loss(W, data.batch))
    for tele in (SteepestTeleport([torch.tensor([0.2], dtype=torch.float64)] * 2), AscentTeleport(5),
                 LieTeleport([torch.randn(1, 12, 12, dtype=torch.float64)] * 2, [0.2, 0.2])):
        W1 = tele.apply(W, task, 0)
        assert max(float((a - b).abs().max()) for a, b in zip(W, W1)) > 1e-3, tele
        assert abs(float(task.loss(W1, data.batch)) - L0) <= 1e-12 * L0, tele


@pytest.mark.parametrize("name", ["any-update-tele", "any-update-tele-bilinear"])
def test_shipped_teleporting_optimizers_accept_a_network_with_biases(name):
    model = _mlp(10, 40, 40, 5, bias=True)
    g = torch.Generator().manual_seed(2)
    X, Y = torch.rand(10, 10, generator=g), torch.rand(10, 5, generator=g)
    traj = optimize_(model, metatele.load_pretrained(name), X, Y, 50, loss="squared")
    assert torch.isfinite(traj.loss).all() and traj.loss.shape == (51, 1) and traj.loss[-1, 0] < traj.loss[0, 0]


def test_a_fixed_size_optimizer_on_another_shape_names_the_shape_it_was_trained_for():
    opt = metatele.load_pretrained("lstm-update-tele")
    trained = list(opt.spec.widths)
    model = _mlp(12, 16, 10, 4)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=rf"trained for bias-free widths \[{', '.join(map(str, trained))}\]; "
                                         r"this model is \[12, 16, 10, 4\]"):
        optimize_(model, opt, *_data(32, 12, 4), 5)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    with pytest.raises(ValueError, match=r"with biases"):
        optimize_(_mlp(*trained, bias=True), opt, torch.rand(8, trained[0]), torch.rand(8, trained[-1]), 5,
                  loss="squared")


def test_bad_arguments_are_refused_before_any_work():
    model = _mlp(12, 16, 4)
    X, y = _data(32, 12, 4)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="steps must be a non-negative integer, got -1"):
        optimize_(model, baseline("gd"), X, y, -1)
    with pytest.raises(ValueError, match=r"X must be \(n, 12\)"):
        optimize_(model, baseline("gd"), X[:, :5], y, 3)
    with pytest.raises(ValueError, match="class labels must be in 0..3"):
        optimize_(model, baseline("gd"), X, y + 4, 3)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    traj = optimize_(model, baseline("gd"), X, y, 0)  # zero steps: the loss at the start, nothing changed
    assert traj.loss.shape == (1, 1) and all(torch.equal(p, q) for p, q in zip(model.parameters(), before))


def test_a_diverging_run_stops_and_keeps_the_last_weights_with_a_finite_loss():
    """GD with lr 1e4 diverges; the guard stops it, warns once, and the model holds exactly the weights of the last
    step below the bound: those of the same run stopped one step earlier."""
    torch.manual_seed(6)
    model = _mlp(12, 16, 10, 4, bias=True)
    start = [p.detach().clone() for p in model.parameters()]
    X, y = _data(64, 12, 4)
    method = baseline("gd", lr=1e4)
    with pytest.warns(DivergenceWarning, match="diverged at step") as caught:
        traj = optimize_(model, method, X, y, 200, batch_size=64)
    assert len([w for w in caught if issubclass(w.category, DivergenceWarning)]) == 1
    stop = traj.loss.shape[0] - 1  # the step whose loss tripped the guard
    assert 1 <= stop < 200
    bad = float(traj.loss[stop, 0])
    assert not (bad <= 1e3 * float(traj.loss[:stop].min()))  # NaN or above the bound
    kept = F.cross_entropy(model(X), y).item()
    assert kept == pytest.approx(float(traj.loss[stop - 1, 0]), rel=1e-5) and kept <= 1e3 * float(traj.loss[:stop].min())
    twin = _mlp(12, 16, 10, 4, bias=True)
    with torch.no_grad():
        for p, q in zip(twin.parameters(), start):
            p.copy_(q)
    optimize_(twin, method, X, y, stop - 1, batch_size=64)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), twin.parameters()))


def test_teleports_that_cannot_act_are_counted_and_warned_once():
    """Samples that are all multiples of one vector make every teleport batch rank 1: the steps only update, and one
    TeleportWarning gives the count; on the original samples nothing is warned."""
    model = _mlp(12, 16, 10, 4)
    X, y = _data(64, 12, 4)
    method = baseline("gd-teleport", lr=0.1, every=2, until=10)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TeleportWarning)
        optimize_(model, method, X, y, 10, batch_size=64)
    X = torch.rand(64, 1, generator=torch.Generator().manual_seed(3)) * X[:1]
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.warns(TeleportWarning, match=r"5 of 5 teleports were skipped") as caught:
        optimize_(model, method, X, y, 10, batch_size=64)
    assert len([w for w in caught if w.category is TeleportWarning]) == 1
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), before))  # the updates still happened
