"""The user-facing teleport API on an nn.Sequential: the exact (nearest) action keeps the outputs on the
teleport batch, gradient ascent steepens the batch loss at the same value, random teleports are a control,
and the Teleporter works beside each standard torch optimizer with either state policy."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metatele.errors import ConfigError
from metatele.teleport.sequential import (
    ArchitectureError, Teleporter, ascent_teleport_, inspect_mlp, random_teleport_, reset_optimizer_state_, teleport_)


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
    with pytest.raises(ArchitectureError, match="too large"):
        ascent_teleport_(m, torch.randn(n, 8, dtype=torch.float64), y, F.cross_entropy)


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


def test_rank_deficient_batch_is_not_teleported():
    """A batch whose rows are dependent has no exact action: reported as not applied, weights unchanged."""
    m = mlp(False)
    X = torch.rand(4, 8, dtype=torch.float64)
    X[3] = X[0] + X[1]
    before = [p.detach().clone() for p in m.parameters()]
    r = ascent_teleport_(m, X, torch.zeros(4, dtype=torch.long), F.cross_entropy)
    assert not r.applied and r.magnitude == () and all(torch.equal(p, q) for p, q in zip(m.parameters(), before))


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
    assert tele.schedule == {5, 20, 21} and tele.n_samples == 4
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
    assert [s for s, _ in tele.history] == [5, 20, 21] and tele.seconds > 0
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
    with pytest.raises(ConfigError, match="too large"):
        teleport_(m, torch.randn(8, 8, dtype=torch.float64), [torch.zeros(6, 6), torch.zeros(5, 5)], 0.1)
    with pytest.raises(ArchitectureError, match=r"\(n, 8\)"):
        ascent_teleport_(m, torch.randn(4, 7, dtype=torch.float64), torch.zeros(4, dtype=torch.long), F.cross_entropy)
    with pytest.raises(ArchitectureError, match="layers must be in 1..2"):
        inspect_mlp(m).max_batch(3)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    X, y = torch.randn(50, 8, dtype=torch.float64), torch.zeros(50, dtype=torch.long)
    with pytest.raises(ArchitectureError, match=r"n_samples=8 is too large.*\(7\)"):
        Teleporter(m, opt, F.cross_entropy, X, y, n_samples=8)
    with pytest.raises(ConfigError, match="steps_per_epoch"):
        Teleporter(m, opt, F.cross_entropy, X, y, at_epochs=[1])
    with pytest.raises(ConfigError, match="state must be"):
        Teleporter(m, opt, F.cross_entropy, X, y, state="forget")
