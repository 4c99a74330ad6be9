"""The one adapter between a user's model and metatele (`metatele.nn`): the task it makes computes the model's own
loss and gradient (with and without biases), its teleport keeps the loss exactly, chains are found inside any model
and teleported exactly there, and bad input is refused before any work, naming what is wrong."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metatele.nn import (ArchitectureError, SequentialTask, chain_of, exact_rows, find_chains, inspect_mlp,
                         teleport_chain_, to_sequential)
from metatele.teleport.sequential import Teleporter


def mlp(*widths: int, bias: bool, dtype: torch.dtype = torch.float64) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        layers += ([nn.LeakyReLU(0.1)] if i else []) + [nn.Linear(a, b, bias=bias)]
    return nn.Sequential(*layers).to(dtype)


def params_as_weights(model: nn.Sequential, bias: bool) -> list[torch.Tensor]:
    """Independent of the adapter: the Linear parameters in the augmented layout [W b]."""
    lins = [m for m in model if isinstance(m, nn.Linear)]
    return [torch.cat([m.weight, m.bias[:, None]], 1) if bias else m.weight for m in lins]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("loss", ["cross_entropy", "squared"])
def test_task_loss_and_gradient_are_the_models_own(bias, loss):
    torch.manual_seed(0)
    model = mlp(7, 6, 5, 3, bias=bias)
    X = torch.randn(40, 7, dtype=torch.float64)
    y = torch.randint(0, 3, (40,)) if loss == "cross_entropy" else torch.randn(40, 3, dtype=torch.float64)
    task = SequentialTask.of(model, X, y, loss=loss, batch_size=16, seed=3)
    assert task.bias == bias and task.widths == (7, 6, 5, 3)
    for step in (0, 2):
        data = task.data(step)
        L, grads = task.loss_and_grad(task.init_weights(), data)
        Xb, yb = data.X[0].T, data.Y[0] if loss == "cross_entropy" else data.Y[0].T
        out = model(Xb)
        ref = F.cross_entropy(out, yb) if loss == "cross_entropy" else 0.5 * (out - yb).pow(2).sum()
        ref_grads = torch.autograd.grad(ref, params_as_weights(model, bias) if not bias else list(model.parameters()))
        if bias:  # parameters come as weight, bias per layer: assemble [∂W ∂b]
            ref_grads = [torch.cat([gw, gb[:, None]], 1) for gw, gb in zip(ref_grads[0::2], ref_grads[1::2])]
        torch.testing.assert_close(L[0], ref.detach(), rtol=1e-12, atol=0)
        for g, r in zip(grads, ref_grads):
            torch.testing.assert_close(g[0], r, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("bias", [True, False])
def test_written_weights_round_trip_and_to_sequential_rebuilds_the_network(bias):
    model = mlp(5, 4, 3, bias=bias)
    chain = inspect_mlp(model)
    W = chain.get_weights()
    assert [tuple(w.shape) for w in W] == [(1, 4, 5 + bias), (1, 3, 4 + bias)]
    twin = to_sequential(W, chain.act, bias)
    X = torch.randn(9, 5, dtype=torch.float64)
    torch.testing.assert_close(twin(X), model(X), rtol=0, atol=0)
    chain.set_weights_([2 * w for w in W])
    assert all(torch.equal(a, 2 * b) for a, b in zip(chain.get_weights(), W))


@pytest.mark.parametrize("bias", [True, False])
def test_teleport_keeps_the_loss_exactly_in_float64(bias):
    torch.manual_seed(1)
    model = mlp(9, 6, 5, 3, bias=bias)
    chain = inspect_mlp(model)
    X, y = torch.randn(chain.max_batch(), 9, dtype=torch.float64), torch.randint(0, 3, (chain.max_batch(),))
    L0 = F.cross_entropy(model(X), y).item()
    W0 = chain.get_weights()
    r = teleport_chain_(chain, X, [torch.randn(6, 6), torch.randn(5, 5)], 0.4)
    assert r.applied and r.exact_samples == X.shape[0] and r.magnitude == pytest.approx((0.4, 0.4))
    assert abs(F.cross_entropy(model(X), y).item() - L0) <= 1e-12 * L0
    assert max(float((a - b).abs().max()) for a, b in zip(chain.get_weights(), W0)) > 1e-2


def test_chains_are_found_and_teleported_exactly_inside_any_model():
    """A CNN head with two chains: find_chains lists them by name; teleporting the second on its own input batch
    (captured by a forward hook) keeps the whole model's outputs on that batch."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Sequential(
        nn.Linear(8, 6), nn.LeakyReLU(0.2), nn.Linear(6, 5), nn.ReLU(),
        nn.Linear(5, 5), nn.LeakyReLU(0.2), nn.Linear(5, 4), nn.LeakyReLU(0.2), nn.Linear(4, 3))).double()
    chains = find_chains(model)
    assert [c.names for c in chains] == [("2.0", "2.2"), ("2.4", "2.6", "2.8")]
    assert [c.widths for c in chains] == [(8, 6, 5), (5, 5, 4, 3)]
    second = chains[1]
    seen = []
    hook = second.linears[0].register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach()))
    images = torch.randn(20, 1, 4, 4, dtype=torch.float64)
    out0 = model(images).detach()
    hook.remove()
    r = teleport_chain_(second, seen[0], [torch.randn(5, 5), torch.randn(4, 4)], 0.3)
    n = r.exact_samples
    assert r.applied and 1 <= n <= second.max_batch() == 6  # the fallback: exact on at most 6 of the 20 (fewer if
    assert f"exact on {n} of 20" in r.reason                  # the ReLU outputs make the first 6 rank-deficient)
    torch.testing.assert_close(model(images[:n]), out0[:n], rtol=1e-10, atol=1e-12)
    assert float((model(images).detach() - out0).abs().max()) > 1e-6  # off the exact rows the outputs move


def test_a_chain_named_by_the_user():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(6, 5), nn.Linear(5, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(F.leaky_relu(self.a(x), 0.3))

    net = Net().double()
    chain = chain_of(net, ["a", "b"], 0.3)
    X = torch.randn(5, 6, dtype=torch.float64)
    out0 = net(X).detach()
    assert teleport_chain_(chain, X, [torch.randn(5, 5)], 0.5).applied
    torch.testing.assert_close(net(X), out0, rtol=1e-10, atol=1e-12)
    with pytest.raises(ArchitectureError, match="no module named c"):
        chain_of(net, ["a", "c"], 0.3)


def test_unsupported_layers_are_named_with_the_part_that_cannot_use_them():
    bad = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ArchitectureError, match=r"the update cannot use this model: module 1 is ReLU"):
        SequentialTask.of(bad, torch.zeros(3, 4), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ArchitectureError, match=r"teleport cannot use this model: module 1 is ReLU"):
        Teleporter(bad, torch.optim.SGD(bad.parameters(), lr=0.1), F.cross_entropy, torch.zeros(3, 4),
                   torch.zeros(3, dtype=torch.long))


def bad_inputs() -> list[tuple[str, dict, str, str | None]]:
    """(case, what to change, the message, the Teleporter's message or None: it takes any loss's targets)."""
    X, y = torch.randn(12, 5), torch.randint(0, 3, (12,))
    nan_X = X.clone()
    nan_X[2, 1] = float("nan")
    return [
        ("transposed X", {"X": X.T}, r"X must be \(n, 5\).*got \(5, 12\) \(it looks transposed: pass X.T\)", ""),
        ("wrong width", {"X": X[:, :4]}, r"X must be \(n, 5\).*got \(12, 4\)", ""),
        ("NaN in X", {"X": nan_X}, "X holds NaN or inf", ""),
        ("inf weights", {"weights": float("inf")}, "weights of layer 0 hold NaN or inf", ""),
        ("label too large", {"y": torch.full((12,), 3)}, r"class labels must be in 0..2.*got 3..3", None),
        ("negative label", {"y": torch.full((12,), -1)}, r"class labels must be in 0..2.*got -1..-1", None),
        ("y too short", {"y": y[:11]}, r"y must be \(12,\) class indices", r"y must have one entry per row of X \(12\)"),
        ("float labels with NaN", {"y": torch.full((12,), float("nan"))}, "y holds NaN or inf", ""),
    ]


@pytest.mark.parametrize("case", bad_inputs(), ids=[c[0] for c in bad_inputs()])
def test_bad_inputs_are_refused_before_any_work_and_the_model_is_unchanged(case):
    _, change, message, tele_message = case
    torch.manual_seed(0)
    model = mlp(5, 4, 3, bias=True, dtype=torch.float32)
    X, y = torch.randn(12, 5), torch.randint(0, 3, (12,))
    if "weights" in change:
        with torch.no_grad():
            model[0].weight[0, 0] = change["weights"]
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=message):
        SequentialTask.of(model, change.get("X", X), change.get("y", y))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    if tele_message is not None:
        with pytest.raises(ValueError, match=tele_message or message):
            Teleporter(model, opt, F.cross_entropy, change.get("X", X), change.get("y", y), at_steps=[0])
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before) if torch.isfinite(q).all())


def test_exact_rows_checks_every_teleported_layer_input():
    """A dead hidden unit (a zero row of W1) makes the second layer's input h1 rank-deficient on 3 samples although
    X has full rank: teleporting both layers is exact on 1 row (3 halved), the first layer alone on all 4."""
    model = mlp(6, 3, 4, 2, bias=False)
    with torch.no_grad():
        model[0].weight[2] = 0.0
    chain = inspect_mlp(model)
    X = torch.randn(1, 6, 4, dtype=torch.float64)
    assert chain.max_batch() == 3 and exact_rows(chain, X) == 1
    assert chain.max_batch(1) == 6 and exact_rows(chain, X, 1) == 4
    r = teleport_chain_(chain, X[0].T, [torch.randn(3, 3), torch.randn(4, 4)], 0.3)
    assert r.applied and r.exact_samples == 1
