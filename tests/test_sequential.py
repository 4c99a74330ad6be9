"""The user-facing teleport API on an nn.Sequential: the exact (nearest) action keeps the outputs on the
teleport batch, gradient ascent steepens the batch loss at the same value, random teleports are a control,
a batch beyond the exact limit or rank-deficient falls back to an exact sub-batch (drift reported), and the
Teleporter works beside each standard torch optimizer with either state policy."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metatele import datasets
from metatele.errors import ConfigError
from metatele.nn import TeleportWarning, teleport_chain_
from metatele.teleport.sequential import (
    ArchitectureError, Teleporter, ascent_teleport_, inspect_mlp, random_teleport_, reset_optimizer_state_)


def teleport_(m: nn.Sequential, X: torch.Tensor, T: list[torch.Tensor], magnitude: float | None):
    return teleport_chain_(inspect_mlp(m), X, T, magnitude)


def mlp(bias: bool, dtype: torch.dtype = torch.float64) -> nn.Sequential:
    return nn.Sequential(nn.Linear(8, 6, bias=bias), nn.LeakyReLU(0.1), nn.Linear(6, 5, bias=bias), nn.LeakyReLU(0.1),
                         nn.Linear(5, 3, bias=bias)).to(dtype)


def loss_and_gn2(model: nn.Sequential, X: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Independent of the library: cross-entropy on (X, y) and Σ‖∂L/∂p‖² over all parameters."""
    loss = F.cross_entropy(model(X), y)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    return float(loss.detach()), float(sum(g.double().pow(2).sum() for g in grads))


@pytest.mark.parametrize("bias", [True, False])
def test_exact_action_keeps_outputs_in_float64(bias):
    m = mlp(bias)
    X = torch.randn(inspect_mlp(m).max_batch(), 8, dtype=torch.float64)
    before = [p.detach().clone() for p in m.parameters()]
    y0 = m(X).detach()
    teleport_(m, X, [torch.randn(6, 6, dtype=torch.float64), torch.randn(5, 5, dtype=torch.float64)], 0.5)
    assert float((m(X).detach() - y0).abs().max() / y0.abs().max()) <= 1e-10
    assert max(float((p.detach() - q).abs().max()) for p, q in zip(m.parameters(), before)) > 1e-2


@pytest.mark.parametrize("bias", [True, False])
def test_identity_changes_nothing_off_the_batch(bias):
    """Nearest action: with n < d, g = I leaves the weights (and so the outputs everywhere) unchanged; the
    plain action would project W1 onto the span of the batch."""
    m = mlp(bias)
    before = [p.detach().clone() for p in m.parameters()]
    teleport_(m, torch.randn(3, 8, dtype=torch.float64), [torch.zeros(6, 6, dtype=torch.float64),
                                                           torch.zeros(5, 5, dtype=torch.float64)], None)
    assert max(float((p.detach() - q).abs().max()) for p, q in zip(m.parameters(), before)) <= 1e-12


@pytest.mark.parametrize("bias", [True, False])
def test_first_layer_only_allows_its_own_width(bias):
    """layers=1 moves only the first hidden layer, so the batch may reach its input width (8, +1 with bias),
    beyond the limit of both layers (6, +1)."""
    m = mlp(bias)
    s = inspect_mlp(m)
    n = s.max_batch(1)
    assert n == 8 + bias > s.max_batch()
    X, y = torch.randn(n, 8, dtype=torch.float64), torch.randint(0, 3, (n,))
    y0, last = m(X).detach(), m[4].weight.detach().clone()
    r = ascent_teleport_(m, X, y, F.cross_entropy, layers=1)
    assert r.applied and len(r.magnitude) == 1 and r.magnitude[0] > 0.1
    assert float((m(X).detach() - y0).abs().max() / y0.abs().max()) <= 1e-10
    assert torch.equal(m[4].weight, last)


@pytest.mark.parametrize("bias", [True, False])
def test_a_batch_beyond_the_exact_limit_is_exact_on_a_sub_batch_and_reports_the_drift(bias):
    """The fallback: 20 samples against a limit of 6 (+1): exact on the first max_batch rows, the loss on all 20
    measured before and after (and it does move: the action is not exact there)."""
    torch.manual_seed(4)
    m = mlp(bias)
    k = inspect_mlp(m).max_batch()
    X, y = torch.rand(20, 8, dtype=torch.float64), torch.randint(0, 3, (20,))
    y0, L0 = m(X).detach(), loss_and_gn2(m, X, y)[0]
    r = ascent_teleport_(m, X, y, F.cross_entropy)
    assert r.applied and r.n_samples == 20 and r.exact_samples == k and f"exact on {k} of 20" in r.reason
    assert float((m(X[:k]).detach() - y0[:k]).abs().max() / y0[:k].abs().max()) <= 1e-10
    L1 = loss_and_gn2(m, X, y)[0]
    assert r.loss_before == pytest.approx(L0, abs=1e-12) and r.loss_after == pytest.approx(L1, abs=1e-12)
    assert r.drift > 1e-6  # off the exact rows the loss moved, and the result says by how much


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ascent_raises_grad_norm_at_the_same_loss(bias, dtype):
    torch.manual_seed(1)
    m = mlp(bias, dtype)
    n = inspect_mlp(m).max_batch()
    X, y = torch.rand(n, 8, dtype=dtype), torch.randint(0, 3, (n,))
    L0, G0 = loss_and_gn2(m, X, y)
    r = ascent_teleport_(m, X, y, F.cross_entropy)
    L1, G1 = loss_and_gn2(m, X, y)
    assert r.applied and r.halvings == 0
    assert G1 > 1.05 * G0 and r.gain == pytest.approx(G1 / G0)
    assert abs(L1 - L0) / L0 <= 1e-4 and r.drift == pytest.approx(abs(L1 - L0) / L0, abs=1e-12)
    assert abs(L1 - L0) / L0 <= (1e-10 if dtype == torch.float64 else 1e-5)


def test_ascent_with_squared_loss():
    """Any twice-differentiable loss: mean squared error against float targets."""
    m = mlp(False)
    X, Y = torch.rand(6, 8, dtype=torch.float64), torch.rand(6, 3, dtype=torch.float64)
    before = F.mse_loss(m(X), Y).item()
    r = ascent_teleport_(m, X, Y, F.mse_loss)
    assert r.applied and r.gain > 1.0 and abs(F.mse_loss(m(X), Y).item() - before) <= 1e-10 * before


def test_random_teleport_has_the_asked_magnitude_and_keeps_the_loss():
    m = mlp(True)
    X, y = torch.rand(7, 8, dtype=torch.float64), torch.randint(0, 3, (7,))
    L0, _ = loss_and_gn2(m, X, y)
    r = random_teleport_(m, X, y, F.cross_entropy, [0.2, 0.4], generator=torch.Generator().manual_seed(0))
    assert r.applied and r.magnitude == pytest.approx((0.2, 0.4))
    assert abs(loss_and_gn2(m, X, y)[0] - L0) <= 1e-10 * L0


def test_tolerance_undoes_a_teleport_that_breaks_it():
    """rtol=0 in float32 cannot be met by a large T after 4 halvings: the weights come back unchanged."""
    torch.manual_seed(3)
    m = mlp(False, torch.float32)
    X, y = torch.rand(6, 8), torch.randint(0, 3, (6,))
    before = [p.detach().clone() for p in m.parameters()]
    r = random_teleport_(m, X, y, F.cross_entropy, 5.0, rtol=0.0)
    if r.applied:  # float32 rounding happened to leave the loss bit-identical: then it is within tolerance
        assert r.loss_after == r.loss_before
    else:
        assert r.halvings == 4 and all(torch.equal(p, q) for p, q in zip(m.parameters(), before))


def test_rank_deficient_batch_falls_back_to_a_full_rank_sub_batch():
    """4 rows of rank 3 have no exact action: halved to the first 2 rows, which are independent."""
    m = mlp(False)
    X = torch.rand(4, 8, dtype=torch.float64)
    X[3] = X[0] + X[1]
    y0 = m(X).detach()
    r = ascent_teleport_(m, X, torch.zeros(4, dtype=torch.long), F.cross_entropy)
    assert r.applied and r.exact_samples == 2 and "rank-deficient" in r.reason
    assert float((m(X[:2]).detach() - y0[:2]).abs().max() / y0[:2].abs().max()) <= 1e-10


def test_a_batch_without_any_full_rank_row_is_skipped_and_changes_nothing():
    m = mlp(False)
    before = [p.detach().clone() for p in m.parameters()]
    r = ascent_teleport_(m, torch.zeros(3, 8, dtype=torch.float64), torch.zeros(3, dtype=torch.long), F.cross_entropy)
    assert r.outcome == "skipped" and r.exact_samples == 0 and r.magnitude == ()
    assert all(torch.equal(p, q) for p, q in zip(m.parameters(), before))


OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1),
    "momentum": lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9),
    "adagrad": lambda p: torch.optim.Adagrad(p, lr=0.05),
    "rmsprop": lambda p: torch.optim.RMSprop(p, lr=0.003),
    "adam": lambda p: torch.optim.Adam(p, lr=0.01),
}


def state_of(opt: torch.optim.Optimizer) -> list[dict[str, torch.Tensor]]:
    return [{k: torch.as_tensor(v).clone() for k, v in opt.state[p].items()} for g in opt.param_groups
            for p in g["params"]]


def same_state(a: list[dict[str, torch.Tensor]], b: list[dict[str, torch.Tensor]]) -> bool:
    return len(a) == len(b) and all(x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
                                    for x, y in zip(a, b))


@pytest.mark.parametrize("state", ["keep", "reset"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_teleporter_with_each_optimizer(name, state):
    """Teleports at the scheduled steps only, within tolerance and steeper; the optimizer state is untouched
    ("keep") or that of a new optimizer ("reset"); training goes on reducing the loss afterwards."""
    torch.manual_seed(0)
    X = torch.rand(200, 8)
    y = ((X - 0.5) @ torch.randn(8, 3)).argmax(1)
    model = mlp(True, torch.float32)
    opt = OPTIMIZERS[name](model.parameters())
    tele = Teleporter(model, opt, F.cross_entropy, X, y, at_steps=[5], at_epochs=[2], steps_per_epoch=10,
                      per_epoch=2, n_samples=4, state=state, generator=torch.Generator().manual_seed(1))
    assert [t for t in range(100) if t in tele.schedule] == [5, 20, 21] and tele.n_samples == 4
    batches = torch.Generator().manual_seed(2)
    for t in range(100):
        before = state_of(opt)
        r = tele.step()
        if t in tele.schedule:
            assert r is not None and r.applied and r.drift <= 1e-4 and r.gain > 1.0
            fresh = state_of(type(opt)([dict(g) for g in opt.param_groups]))
            assert same_state(state_of(opt), fresh if state == "reset" else before)
            if state == "reset" and name != "sgd":  # plain SGD has no state to reset
                assert not same_state(before, fresh)
        else:
            assert r is None and same_state(state_of(opt), before)
        if t == 22:
            after_teleports = F.cross_entropy(model(X), y).item()
        idx = torch.randint(0, 200, (20,), generator=batches)
        opt.zero_grad()
        F.cross_entropy(model(X[idx]), y[idx]).backward()
        opt.step()
    assert [s for s, _ in tele.history] == [5, 20, 21] and tele.seconds > 0 and tele.counts["applied"] == 3
    assert F.cross_entropy(model(X), y).item() < 0.9 * after_teleports  # it goes on learning


def test_reset_refuses_an_optimizer_it_cannot_rebuild():
    class Needy(torch.optim.SGD):
        def __init__(self, params, extra):  # an argument the param groups do not hold
            super().__init__(params, lr=0.1)

    with pytest.raises(ConfigError, match="state='keep'"):
        reset_optimizer_state_(Needy(mlp(False).parameters(), extra=1))


def test_refuses_what_it_cannot_teleport():
    with pytest.raises(ConfigError, match="LeakyReLU"):
        inspect_mlp(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)))
    with pytest.raises(ArchitectureError, match="nn.Sequential"):
        inspect_mlp(nn.Linear(4, 4))
    with pytest.raises(ArchitectureError, match="bias"):
        inspect_mlp(nn.Sequential(nn.Linear(4, 4), nn.LeakyReLU(0.1), nn.Linear(4, 2, bias=False)))
    with pytest.raises(ArchitectureError, match="negative_slope"):
        inspect_mlp(nn.Sequential(nn.Linear(4, 4), nn.LeakyReLU(1.5), nn.Linear(4, 2)))
    m = mlp(True)
    with pytest.raises(ValueError, match=r"\(n, 8\)"):
        ascent_teleport_(m, torch.randn(4, 7, dtype=torch.float64), torch.zeros(4, dtype=torch.long), F.cross_entropy)
    with pytest.raises(ArchitectureError, match="layers must be in 1..2"):
        inspect_mlp(m).max_batch(3)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    X, y = torch.randn(50, 8, dtype=torch.float64), torch.zeros(50, dtype=torch.long)
    with pytest.raises(ConfigError, match=r"n_samples must be in 1..50"):
        Teleporter(m, opt, F.cross_entropy, X, y, n_samples=51)
    with pytest.raises(ConfigError, match="steps_per_epoch"):
        Teleporter(m, opt, F.cross_entropy, X, y, at_epochs=[1])
    with pytest.raises(ConfigError, match="state must be"):
        Teleporter(m, opt, F.cross_entropy, X, y, state="forget")


@pytest.mark.parametrize("dataset, hidden, teleports",
                         [("digits", 32, 18), pytest.param("mnist5k", 32, 4, marks=pytest.mark.slow)])
def test_teleporter_default_applies_on_real_data(dataset, hidden, teleports):
    """The default n_samples (half the exact limit) teleports on real images, whose constant pixels make a batch
    at the limit rank-deficient: every teleport applied, exactly on its whole batch, none warned."""
    data = datasets.load(dataset)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(data.n_features, hidden), nn.LeakyReLU(0.1), nn.Linear(hidden, data.n_classes))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tele = Teleporter(model, opt, F.cross_entropy, data.X_train, data.y_train, at_steps=range(0, 2 * teleports, 2),
                      generator=torch.Generator().manual_seed(0))
    batches = torch.Generator().manual_seed(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TeleportWarning)
        for _ in range(2 * teleports):
            tele.step()
            idx = torch.randint(0, data.X_train.shape[0], (64,), generator=batches)
            opt.zero_grad()
            F.cross_entropy(model(data.X_train[idx]), data.y_train[idx]).backward()
            opt.step()
    results = [r for _, r in tele.history]
    assert tele.counts == {"applied": teleports, "undone": 0, "skipped": 0, "sub-batch": 0}
    assert all(r.exact_samples == r.n_samples == (data.n_features + 1) // 2 for r in results)
    assert all(r.drift <= 1e-4 and r.gain > 1.0 for r in results)


def test_teleports_undone_skipped_or_on_a_sub_batch_are_counted_and_warned_once_per_run():
    torch.manual_seed(0)
    model = mlp(False, torch.float32)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    X, y = torch.zeros(30, 8), torch.zeros(30, dtype=torch.long)  # no sample has full rank: every teleport skipped
    tele = Teleporter(model, opt, F.cross_entropy, X, y, at_steps=range(5))
    with pytest.warns(TeleportWarning, match="teleport at step 0 was skipped") as caught:
        for _ in range(5):
            tele.step()
    assert len(caught) == 1 and tele.counts == {"applied": 0, "undone": 0, "skipped": 5, "sub-batch": 0}
    X = torch.rand(30, 8)
    tele = Teleporter(model, opt, F.cross_entropy, X, y, at_steps=range(3), n_samples=20)  # limit: 6
    with pytest.warns(TeleportWarning, match="exact on 6 of 20 samples") as caught:
        for _ in range(3):
            tele.step()
    assert len(caught) == 1 and tele.counts == {"applied": 3, "undone": 0, "skipped": 0, "sub-batch": 3}
    tele = Teleporter(model, opt, F.cross_entropy, X, y, at_steps=range(3), method="random", magnitude=5.0, rtol=0.0,
                      n_samples=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            tele.step()
    undone = tele.counts["undone"]
    assert len([w for w in caught if w.category is TeleportWarning]) == (undone > 0) and undone + tele.counts["applied"] == 3


def test_teleporter_can_teleport_on_the_steps_own_batch():
    torch.manual_seed(0)
    model = mlp(True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    X, y = torch.rand(40, 8, dtype=torch.float64), torch.randint(0, 3, (40,))
    tele = Teleporter(model, opt, F.cross_entropy, X, y, at_steps=[0], n_samples=5)
    Xb, yb = X[10:30], y[10:30]
    out0 = model(Xb[:5]).detach()
    r = tele.step((Xb, yb))
    assert r.applied and r.n_samples == r.exact_samples == 5
    assert r.loss_before == pytest.approx(F.cross_entropy(out0, yb[:5]).item(), rel=1e-12)
    torch.testing.assert_close(model(Xb[:5]).detach(), out0, rtol=1e-10, atol=1e-12)
