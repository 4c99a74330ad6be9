"""metatele.optim.LearnedOptimizer: a torch.optim optimizer in a user's own loop. It learns on digits with a
DataLoader and biases, resumes bit for bit, follows optimize_'s trajectory (the same inner-step function), runs
on any parameter shape and dtype, works with lr schedulers and gradient clipping, and its guards and errors
say what happened."""
from __future__ import annotations

import copy
import gc
import math
import io
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from metatele import datasets
from metatele.learned.apply import optimize_
from metatele.methods import baseline
from metatele.nn import TeleportWarning
from metatele.optim import DivergenceWarning, LearnedOptimizer, shipped_names

pytestmark = pytest.mark.usefixtures("one_thread")


def _digits() -> datasets.Dataset:
    return datasets.load("digits")


def _mlp(*widths: int, bias: bool = True, slope: float = 0.1) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        layers += ([nn.LeakyReLU(slope)] if i else []) + [nn.Linear(a, b, bias=bias)]
    return nn.Sequential(*layers)


def _loader(d: datasets.Dataset, seed: int = 0) -> DataLoader:
    return DataLoader(TensorDataset(d.X_train, d.y_train), batch_size=128, shuffle=True,
                      generator=torch.Generator().manual_seed(seed))


def _train(model: nn.Module, opt: torch.optim.Optimizer, batches: list[tuple[torch.Tensor, torch.Tensor]]
           ) -> list[float]:
    losses = []
    for x, y in batches:
        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss
        losses.append(float(opt.step(closure).detach()))
    return losses


def test_user_loop_on_digits_learns_and_resumes_bit_for_bit():
    d = _digits()
    torch.manual_seed(0)
    model = _mlp(64, 32, 10)  # with biases
    opt = LearnedOptimizer(model.parameters(), "any-update", lr=0.3)
    losses = []
    for epoch in range(2):
        for x, y in _loader(d, epoch):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    assert len(losses) == 24 and opt.skipped_steps == 0
    assert sum(losses[-4:]) / 4 < 0.5 * losses[0]  # from 2.3
    val_acc = (model(d.X_val).argmax(1) == d.y_val).float().mean().item()
    assert val_acc > 0.5  # chance: 0.1

    # snapshot through torch.save/torch.load(weights_only=True): the state is plain tensors and numbers
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    more = list(_loader(d, 7))
    after = _train(model, opt, more)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    model2 = _mlp(64, 32, 10)
    model2.load_state_dict(saved["model"])
    opt2 = LearnedOptimizer(model2.parameters(), "any-update", lr=0.3)
    opt2.load_state_dict(saved["opt"])
    assert _train(model2, opt2, more) == after
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)
    assert opt2.steps_taken == opt.steps_taken == 24 + len(more)


@pytest.mark.parametrize("name", ["any-update", "gd"])
def test_follows_optimize_trajectory(name):
    """Same model, same mini-batches: the loop's losses are optimize_'s (the same apply_method runs)."""
    d = _digits()
    X, y = d.X_train[:512], d.y_train[:512]
    torch.manual_seed(1)
    model = _mlp(64, 16, 10, bias=False)
    twin = copy.deepcopy(model)
    method = baseline("gd", lr=0.5) if name == "gd" else name
    if name == "gd":
        ref = optimize_(twin, method, X, y, 15, batch_size=64, seed=3)
    else:
        ref = optimize_(twin, LearnedOptimizer(twin.parameters(), name).method, X, y, 15, batch_size=64, seed=3)
    order = torch.randperm(512, generator=torch.Generator().manual_seed(3))  # optimize_'s visiting order
    opt = LearnedOptimizer(model.parameters(), method)
    idx = [order[(t * 64 + torch.arange(64)) % 512] for t in range(15)]
    batches = [(X[i], y[i]) for i in idx]
    losses = _train(model, opt, batches)
    torch.testing.assert_close(torch.tensor(losses), ref.loss[:15, 0], rtol=1e-4, atol=1e-6)
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


class _AnyShapes(nn.Module):
    """Conv2d, BatchNorm, an embedding, a scalar parameter and a Linear head: every tensor shape."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4)
        self.pos = nn.Embedding(64, 4)
        self.temperature = nn.Parameter(torch.tensor(1.0))
        self.head = nn.Linear(4 * 64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.norm(self.conv(x.view(-1, 1, 8, 8))))
        h = h.flatten(2).transpose(1, 2) + self.pos.weight  # (n, 64, 4)
        return self.head(h.flatten(1)) * self.temperature


def test_size_agnostic_update_applies_to_every_parameter_tensor():
    d = _digits()
    torch.manual_seed(0)
    model = _AnyShapes()
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    opt = LearnedOptimizer(model.parameters(), "any-update", lr=0.1)
    losses = _train(model, opt, [b for epoch in range(3) for b in _loader(d, epoch)])
    assert sum(losses[-3:]) / 3 < 0.5 * losses[0] and opt.skipped_steps == 0
    for k, v in model.named_parameters():
        assert not torch.equal(v, before[k]), f"{k} did not change"


def test_bfloat16_parameters_follow_float32():
    """bfloat16 parameters (the method computes in float32): they stay bfloat16, learn, and track float32."""
    d = _digits()
    batches = [b for epoch in range(3) for b in _loader(d, epoch)]
    curves = {}
    for dtype in (torch.float32, torch.bfloat16):
        torch.manual_seed(0)
        model = _mlp(64, 32, 10).to(dtype)
        opt = LearnedOptimizer(model.parameters(), "any-update", lr=0.3)
        curves[dtype] = torch.tensor(_train(model, opt, [(x.to(dtype), y) for x, y in batches]))
        assert all(p.dtype == dtype for p in model.parameters())
    bf = curves[torch.bfloat16]
    assert bf[-6:].mean() < 0.5 * bf[0]
    assert (bf[-6:].mean() - curves[torch.float32][-6:].mean()).abs() < 0.15


def test_lr_scheduler_and_param_groups_scale_the_update():
    torch.manual_seed(0)
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    models = [_mlp(6, 8, 3) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    w0 = [p.detach().clone() for p in models[0].parameters()]
    opts = [LearnedOptimizer(m.parameters(), baseline("gd", lr=0.1)) for m in models]
    sched = torch.optim.lr_scheduler.StepLR(opts[1], step_size=1, gamma=0.25)
    for m, o in zip(models, opts):
        _train(m, o, [(x, y)])
    sched.step()
    assert opts[1].param_groups[0]["lr"] == 0.25
    w1 = [p.detach().clone() for p in models[0].parameters()]  # both models are here after the same first step
    assert all(torch.equal(a, b) for a, b in zip(models[1].parameters(), w1))
    for m, o in zip(models, opts):
        _train(m, o, [(x, y)])
    for a, b, w in zip(models[0].parameters(), models[1].parameters(), w1):
        torch.testing.assert_close(b - w, 0.25 * (a - w))  # the scheduled lr scales the second step
    assert any(not torch.equal(a, b) for a, b in zip(models[0].parameters(), w0))
    # a group with lr 0 keeps its parameters
    model = _mlp(6, 8, 3)
    frozen = model[0].weight.detach().clone()
    opt = LearnedOptimizer([{"params": [model[0].weight], "lr": 0.0},
                            {"params": [p for n, p in model.named_parameters() if n != "0.weight"]}], "any-update")
    _train(model, opt, [(x, y)] * 3)
    assert torch.equal(model[0].weight, frozen) and not torch.equal(model[2].weight, models[0][2].weight)


def test_lr_multiplies_the_update_exactly_for_a_rule():
    torch.manual_seed(0)
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
    a, b = _mlp(5, 7, 3), _mlp(5, 7, 3)
    b.load_state_dict(a.state_dict())
    w0 = [p.detach().clone() for p in a.parameters()]
    _train(a, LearnedOptimizer(a.parameters(), baseline("gd", lr=0.2)), [(x, y)])
    _train(b, LearnedOptimizer(b.parameters(), baseline("gd", lr=0.2), lr=0.5), [(x, y)])
    for pa, pb, w in zip(a.parameters(), b.parameters(), w0):
        torch.testing.assert_close(pb - w, 0.5 * (pa - w))


def test_clip_grad_norm_is_respected():
    """The optimizer reads the gradients after clipping: GD through it moves by exactly lr × the clipped gradient."""
    torch.manual_seed(0)
    x, y = torch.randn(16, 5) * 10, torch.randint(0, 3, (16,))
    model = _mlp(5, 7, 3)
    opt = LearnedOptimizer(model.parameters(), baseline("gd", lr=1.0))
    w0 = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    total = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.01)
    assert total > 0.01
    opt.step()
    moved = torch.sqrt(sum(((p.detach() - w) ** 2).sum() for p, w in zip(model.parameters(), w0)))
    assert moved == pytest.approx(0.01, rel=1e-4)


def test_fixed_size_optimizer_on_its_shape_runs_and_on_another_names_its_shape():
    torch.manual_seed(0)
    model = _mlp(20, 20, 20, bias=False)
    opt = LearnedOptimizer(model.parameters(), "lstm-update")
    x, y = torch.rand(16, 20), torch.randint(0, 20, (16,))
    _train(model, opt, [(x, y)] * 3)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    with pytest.raises(ValueError, match=r"trained for the bias-free 20-20-20 MLP"):
        LearnedOptimizer(_mlp(64, 32, 10).parameters(), "lstm-update-tele")


def test_clear_errors_for_bad_names_params_and_closures():
    model = _mlp(4, 5, 2)
    with pytest.raises(ValueError, match="unknown learned optimizer 'adamw'.*any-update"):
        LearnedOptimizer(model.parameters(), "adamw")
    with pytest.raises(TypeError, match="floating-point"):
        LearnedOptimizer([torch.zeros(3, dtype=torch.long)], "any-update")
    with pytest.raises(TypeError, match="iterable"):
        LearnedOptimizer(model[0].weight, "any-update")
    with pytest.raises(ValueError, match="empty"):
        LearnedOptimizer([], "any-update")
    with pytest.raises(ValueError, match="lr must be"):
        LearnedOptimizer(model.parameters(), "any-update", lr=-1.0)
    with pytest.raises(TypeError, match="method must be"):
        LearnedOptimizer(model.parameters(), 3)
    with pytest.raises(ValueError, match="max_loss_ratio"):
        LearnedOptimizer(model.parameters(), "any-update", max_loss_ratio=0.5)
    opt = LearnedOptimizer(model.parameters(), "any-update")

    def no_return() -> None:
        opt.zero_grad()
        F.cross_entropy(model(torch.randn(3, 4)), torch.tensor([0, 1, 0])).backward()
    with pytest.raises(TypeError, match="closure must return the loss.*got None"):
        opt.step(no_return)
    with pytest.raises(ValueError, match="not a LearnedOptimizer state dict"):
        opt.load_state_dict(torch.optim.SGD(model.parameters(), lr=0.1).state_dict())
    other = LearnedOptimizer(model.parameters(), "any-update-tele", teleport_every=0).state_dict()
    with pytest.raises(ValueError, match="of method 'any-update-tele'"):
        opt.load_state_dict(other)
    assert set(shipped_names()) >= {"any-update", "any-update-tele", "lstm-update"}


def test_guard_rolls_back_a_non_finite_or_exploding_loss_and_warns_once():
    torch.manual_seed(0)
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    model = _mlp(6, 8, 3)
    opt = LearnedOptimizer(model.parameters(), "any-update", lr=0.1)
    _train(model, opt, [(x, y)] * 3)
    good = [p.detach().clone() for p in opt.state[model[0].weight]["last_good"][None]]
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")  # the weights after the last update are now bad
    with pytest.warns(DivergenceWarning, match="the loss is nan"):
        _train(model, opt, [(x, y)])
    assert opt.skipped_steps == 1 and torch.equal(model[0].weight, good[0])
    assert all(torch.isfinite(p).all() for p in model.parameters())

    def exploding() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y) * 1e6
        loss.backward()
        return loss
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once: no second warning
        opt.step(exploding)
    assert opt.skipped_steps == 2 and "running minimum" in opt.guard.last_reason
    # without a closure the gradients are checked
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    model[2].bias.grad[0] = float("inf")
    before = [p.detach().clone() for p in model.parameters()]
    opt.step()
    assert opt.skipped_steps == 3 and "gradient" in opt.guard.last_reason
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before))
    _train(model, opt, [(x, y)])  # and it trains on
    assert opt.skipped_steps == 3


def test_guard_keeps_the_shipped_optimizer_finite_where_it_diverges():
    """The shipped any-update at its meta-trained lr diverges on digits (issue 25: NaN by step 13); the guard
    keeps the model at weights with a finite loss and counts the refused steps."""
    d = _digits()
    torch.manual_seed(0)
    model = _mlp(64, 32, 10)
    opt = LearnedOptimizer(model.parameters(), "any-update")
    with pytest.warns(DivergenceWarning):
        _train(model, opt, list(_loader(d))[:10] * 3)
    assert opt.skipped_steps > 0
    assert torch.isfinite(F.cross_entropy(model(d.X_train), d.y_train))


def _head_model() -> nn.Sequential:
    """A convolutional trunk (no exact teleport) and a Linear/LeakyReLU/Linear head (a teleportable chain)."""
    return nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(256, 24), nn.LeakyReLU(0.1), nn.Linear(24, 10))


def test_teleport_on_the_chains_of_any_model_keeps_their_outputs_and_names_the_other_layers():
    d = _digits()
    torch.manual_seed(0)
    model = _head_model()
    with pytest.warns(TeleportWarning, match=r"teleport is off for 1 \("):
        opt = LearnedOptimizer(model.parameters(), "any-update-tele", lr=0.0, model=model, teleport_every=2)
    assert opt.teleport_chains == [("4", "6")]
    x, y = d.X_train[:20], d.y_train[:20]  # 20 ≤ 24 + 1: the head's action is exact on the whole batch
    trunk = model[:4]
    conv_before = model[1].weight.detach().clone()
    for t in range(4):
        head_before = [p.detach().clone() for p in model[4:].parameters()]
        out_before = model(x).detach()
        _train(model, opt, [(x, y)])
        moved = any(not torch.equal(a, b) for a, b in zip(model[4:].parameters(), head_before))
        assert moved == (t % 2 == 0)  # lr = 0: only the teleports (steps 0, 2) change the head
        torch.testing.assert_close(model(x), out_before, rtol=1e-4, atol=1e-4)  # exact on the batch
    assert torch.equal(model[1].weight, conv_before)
    assert opt.teleport_counts == {"applied": 2}
    rec = opt.teleports[-1]
    assert rec.chain == "4/6" and rec.result.exact_samples == 20 and rec.result.magnitude[0] > 0
    assert trunk(x).shape == (20, 256)


def test_teleport_on_a_sub_batch_is_counted_warned_once_and_measured():
    d = _digits()
    torch.manual_seed(0)
    model = _mlp(64, 32, 10)
    opt = LearnedOptimizer(model.parameters(), "any-update-tele", lr=0.3, model=model)
    assert opt.teleport_chains == [("0", "2")]
    with pytest.warns(TeleportWarning, match="exact on 32 of 128 samples") as caught:
        losses = _train(model, opt, list(_loader(d))[:6])
    assert len([w for w in caught if issubclass(w.category, TeleportWarning)]) == 1
    assert opt.teleport_counts == {"applied on a sub-batch": 6}
    assert all(0 < r.output_drift_full < 0.1 for r in opt.teleports)  # the rows outside the sub-batch moved a little
    assert losses[-1] < losses[0]


def test_teleport_batch_from_a_sampler_measures_the_loss_drift_exactly():
    d = _digits()
    torch.manual_seed(0)
    model = _mlp(64, 32, 10)
    xt, yt = d.X_train[:16], d.y_train[:16]
    opt = LearnedOptimizer(model.parameters(), "any-update-tele", lr=0.3, model=model, teleport_every=3,
                           teleport_batch=lambda: F.cross_entropy(model(xt), yt))
    _train(model, opt, list(_loader(d))[:7])
    assert opt.teleport_counts == {"applied": 3}
    for r in opt.teleports:
        assert r.result.n_samples == r.result.exact_samples == 16
        assert math.isfinite(r.result.loss_before) and r.result.drift < 1e-4


def test_named_chain_outside_a_sequential():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(6, 8), nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc2(F.leaky_relu(self.fc1(x), 0.2))

    torch.manual_seed(0)
    net = Net()
    x, y = torch.randn(5, 6), torch.randint(0, 3, (5,))
    opt = LearnedOptimizer(net.parameters(), "any-update-tele", lr=0.0, model=net, chains=[["fc1", "fc2"]],
                           negative_slope=0.2)
    before = net(x).detach()
    _train(net, opt, [(x, y)])
    assert opt.teleport_counts == {"applied": 1}
    torch.testing.assert_close(net(x), before, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="negative_slope"):
        LearnedOptimizer(net.parameters(), "any-update-tele", model=net, chains=[["fc1", "fc2"]])


def test_teleport_off_without_a_model_or_a_batch_is_warned_and_counted():
    torch.manual_seed(0)
    model = _mlp(6, 8, 3)
    x, y = torch.randn(5, 6), torch.randint(0, 3, (5,))
    with pytest.warns(TeleportWarning, match="no model= was given"):
        opt = LearnedOptimizer(model.parameters(), "any-update-tele")
    _train(model, opt, [(x, y)])
    assert opt.teleport_counts == {} and opt.teleport_chains == []
    opt = LearnedOptimizer(model.parameters(), "any-update-tele", model=model)
    opt.zero_grad()
    with torch.no_grad():
        model(x)  # no backward: nothing to teleport on
    model[0].weight.grad = torch.zeros_like(model[0].weight)
    with pytest.warns(TeleportWarning, match="skipped: no batch was captured"):
        opt.step()
    assert opt.teleport_counts == {"skipped": 1}


def test_fixed_size_teleporting_optimizer_on_its_shape():
    torch.manual_seed(0)
    model = _mlp(20, 20, 20, bias=False)
    x, y = torch.rand(16, 20), torch.randint(0, 20, (16,))
    opt = LearnedOptimizer(model.parameters(), "lstm-update-tele", model=model)
    losses = _train(model, opt, [(x, y)] * 5)
    assert opt.teleport_counts == {"applied": 5} and all(math.isfinite(v) for v in losses)


def test_resume_with_teleport_is_bit_identical():
    d = _digits()
    batches = list(_loader(d))[:8]

    def fresh() -> tuple[nn.Module, LearnedOptimizer]:
        torch.manual_seed(0)
        m = _mlp(64, 32, 10)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TeleportWarning)
            return m, LearnedOptimizer(m.parameters(), "any-update-tele", lr=0.3, model=m, teleport_every=3)
    model, opt = fresh()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TeleportWarning)
        _train(model, opt, batches[:4])
        saved = copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict()})
        after = _train(model, opt, batches[4:])
        model2, opt2 = fresh()
        model2.load_state_dict(saved["model"])
        opt2.load_state_dict(saved["opt"])
        assert _train(model2, opt2, batches[4:]) == after
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), model2.parameters()))
    assert opt2.teleport_counts == opt.teleport_counts


def test_large_models_run_the_update_in_chunks_with_the_same_values(monkeypatch):
    """m1's LSTM runs on a large model's rows in cache-sized chunks (`CHUNK_ABOVE`): the update is unchanged."""
    from metatele.learned import coordinatewise

    torch.manual_seed(0)
    w = [torch.randn(1, 60, 50), torch.randn(1, 60), torch.randn(1, 7, 60)]
    g = [torch.randn_like(t) for t in w]
    method = LearnedOptimizer([torch.zeros(1, requires_grad=True)], "any-update").method
    with torch.no_grad():
        whole, _ = method.propose(w, g, method.init_state(w))
        monkeypatch.setattr(coordinatewise, "CHUNK_ABOVE", 1000)
        monkeypatch.setattr(coordinatewise, "CHUNK_ROWS", 512)
        chunked, _ = method.propose(w, g, method.init_state(w))
    for a, b in zip(whole.update, chunked.update):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=0)


def test_a_deleted_optimizer_leaves_no_hooks_on_the_model():
    model = _mlp(6, 8, 3)
    opt = LearnedOptimizer(model.parameters(), "any-update-tele", model=model)
    assert model[0]._forward_pre_hooks and model[2]._forward_hooks
    del opt
    gc.collect()
    assert not model[0]._forward_pre_hooks and not model[2]._forward_hooks
