from __future__ import annotations

import pytest
import torch

from metatele import tasks
from metatele.teleport import action as S
from metatele.teleport.ascent import gradient_ascent_teleport
from metatele.errors import RankDeficientError
from metatele.tasks.mlp import LeakyReLU

ACT = LeakyReLU(0.1)


def rel_change(W, b, L0):
    return ((b.loss(W, b.data(0)) - L0).abs() / L0)


def random_T(b, scale=1.0):
    return [scale * torch.randn(w.shape[0], w.shape[1], w.shape[1], dtype=w.dtype) for w in b.weights[:-1]]


@pytest.mark.parametrize("widths", [(20, 20, 20), (20, 20, 20, 20, 20)])
@pytest.mark.parametrize("eps", [0.01, 0.1, 1.0])
def test_exact_action_keeps_loss(widths, eps):
    b = tasks.sample(range(100), widths=widths, n=20, dtype=torch.float64)
    L0 = b.loss(b.weights, b.data(0))
    W = S.teleport(b.weights, b.X, random_T(b), eps, act=ACT)
    assert rel_change(W, b, L0).max() <= 1e-10
    # and it really moved the weights
    assert (W[0] - b.weights[0]).abs().max() > 1e-4 * eps


def test_first_order_drift_grows_as_eps_squared():
    b = tasks.sample(range(200), dtype=torch.float64)
    L0 = b.loss(b.weights, b.data(0))
    T = random_T(b)
    med = {eps: rel_change(S.teleport(b.weights, b.X, T, eps, act=ACT, exact=False), b, L0).median() for eps in (0.01, 0.1)}
    ratio = float(med[0.1] / med[0.01])
    assert 50 <= ratio <= 200, ratio


def test_gradient_changes_but_loss_does_not():
    b = tasks.sample(range(50), dtype=torch.float64)
    L0, g0 = b.loss_and_grad(b.weights, b.data(0))
    W = S.teleport(b.weights, b.X, random_T(b), 0.1, act=ACT)
    L1, g1 = b.loss_and_grad(W, b.data(0))
    assert ((L1 - L0).abs() / L0).max() <= 1e-10
    change = sum((a - c).pow(2).sum((1, 2)) for a, c in zip(g1, g0)).sqrt() / S.grad_norm_sq(g0).sqrt()
    assert change.min() > 1e-3


def test_composition():
    b = tasks.sample(range(20), widths=(20, 20, 20, 20), dtype=torch.float64)
    eye = torch.eye(20, dtype=torch.float64)
    g1 = [eye + 0.1 * torch.randn(20, 20, 20, dtype=torch.float64) for _ in range(2)]
    g2 = [eye + 0.1 * torch.randn(20, 20, 20, dtype=torch.float64) for _ in range(2)]
    seq = S.group_action(S.group_action(b.weights, b.X, g1, act=ACT), b.X, g2, act=ACT)
    once = S.group_action(b.weights, b.X, [torch.bmm(a, c) for a, c in zip(g2, g1)], act=ACT)
    for a, c in zip(seq, once):
        assert torch.allclose(a, c, rtol=0, atol=1e-9 * c.abs().max())


def test_rescaling_exact_for_more_samples_than_width():
    b = tasks.sample(range(30), widths=(5, 8, 3), n=50, dtype=torch.float64)
    L0 = b.loss(b.weights, b.data(0))
    W = S.rescale(b.weights, [torch.randn(30, 8, dtype=torch.float64)])
    assert rel_change(W, b, L0).max() <= 1e-12
    assert not torch.allclose(W[0], b.weights[0])


def test_gradient_ascent_teleport_steepens_at_same_loss():
    b = tasks.sample(range(1000, 1064), dtype=torch.float64)
    L0, g0 = b.loss_and_grad(b.weights, b.data(0))
    W = gradient_ascent_teleport(b.weights, b, b.teleport_data(0))
    L1, g1 = b.loss_and_grad(W, b.data(0))
    assert ((L1 - L0).abs() / L0).max() <= 1e-8
    assert (S.grad_norm_sq(g1) / S.grad_norm_sq(g0)).median() >= 1.10


def test_gd_step_after_teleport_beats_plain_gd():
    # Small step (first-order regime): the decrease is ≈ lr·‖∇L‖², which teleport raised.
    lr = 1e-5
    b = tasks.sample(range(2000, 2064), dtype=torch.float64)
    _, g0 = b.loss_and_grad(b.weights, b.data(0))
    W = gradient_ascent_teleport(b.weights, b, b.teleport_data(0))
    _, g1 = b.loss_and_grad(W, b.data(0))
    plain = b.loss([w - lr * g for w, g in zip(b.weights, g0)], b.data(0))
    tele = b.loss([w - lr * g for w, g in zip(W, g1)], b.data(0))
    assert tele.median() < plain.median()


def test_rank_deficient_input_raises():
    b = tasks.sample(range(4), dtype=torch.float64)
    X = b.X.clone()
    X[:, :, 1] = X[:, :, 0]  # two identical samples: rank 19 < n = 20
    T = random_T(b)
    with pytest.raises(RankDeficientError):
        S.teleport(b.weights, X, T, 0.1, act=ACT)
    wide = tasks.sample([0], widths=(5, 8, 3), n=6, dtype=torch.float64)
    with pytest.raises(RankDeficientError):
        S.teleport(wide.weights, wide.X, random_T(wide), 0.1, act=ACT)
    # explicitly asking for least squares works and still gives finite weights
    W = S.teleport(b.weights, X, T, 0.1, least_squares=True, act=ACT)
    assert all(torch.isfinite(w).all() for w in W)


def test_float32_batched_matches_single():
    b = tasks.sample(range(8))
    T = random_T(b)
    W = S.teleport(b.weights, b.X, T, 0.01, act=ACT)
    one = tasks.sample([3])
    W1 = S.teleport(one.weights, one.X, [t[3:4] for t in T], 0.01, act=ACT)
    assert torch.allclose(W[0][3], W1[0][0], rtol=1e-5, atol=1e-5)


def _rescale_only_tasks():
    b = tasks.sample([3, 4], widths=(5, 4, 3), n=8, dtype=torch.float64)  # n > every width: no exact GL action
    assert b.symmetry is tasks.Symmetry.RESCALE
    return b


def _policies(b):
    from metatele.learned.coordinatewise import SteepestTeleport
    from metatele.methods.teleports import AscentTeleport, LieTeleport
    mags = [torch.full((2,), 0.3, dtype=torch.float64)]
    return {"lie": LieTeleport(random_T(b), [0.3]), "ascent": AscentTeleport(steps=3),
            "steepest": SteepestTeleport(mags)}


@pytest.mark.parametrize("name", ["lie", "ascent", "steepest"])
def test_a_teleport_policy_on_rescale_only_tasks_rescales_and_keeps_the_loss(name):
    b = _rescale_only_tasks()
    W = b.init_weights()
    L0 = b.loss(W, b.data(0))
    moved = _policies(b)[name].apply(W, b, 0)  # the GL action would raise RankDeficientError here
    torch.testing.assert_close(b.loss(moved, b.data(0)), L0, rtol=1e-10, atol=0)
    assert not torch.allclose(moved[0], W[0])
    ratio = moved[0] / W[0]  # a positive diagonal rescaling: each row of W_1 scaled by one positive factor
    assert bool((ratio > 0).all()) and torch.allclose(ratio, ratio[..., :1].expand_as(ratio))
    if name != "lie":  # ascent and steepest raise the gradient norm
        g0, g1 = (S.grad_norm_sq(b.loss_and_grad(w, b.data(0))[1]) for w in (W, moved))
        assert bool((g1 > g0).all())


@pytest.mark.parametrize("name", ["lie", "ascent", "steepest"])
def test_a_teleport_policy_on_tasks_without_symmetry_leaves_them_and_warns(name):
    b = _rescale_only_tasks()
    policy = _policies(b)[name]
    b.__class__ = type("NoSymmetry", (type(b),), {"symmetry": tasks.Symmetry.NONE})
    W = b.init_weights()
    with pytest.warns(RuntimeWarning, match="supports no symmetry"):
        moved = policy.apply(W, b, 0)
    assert all(torch.equal(a, c) for a, c in zip(moved, W))


@pytest.mark.parametrize("method", ["lstm-update-tele", "lstm-lr-tele", "any-update-tele", "any-update-tele-bilinear"])
def test_learned_teleporting_methods_run_on_rescale_only_tasks(method):
    from metatele import step
    from metatele.learned import LEARNED, build
    model = build(LEARNED[method].spec.from_config(method, {"widths": [5, 4, 3], "hidden": 4, "magnitude": 0.1})).double()
    traj = step.rollout(model, _rescale_only_tasks(), 5)
    assert bool(torch.isfinite(traj.loss).all())
