"""The adafac learned update rule: Adam-nominal, size-agnostic, horizon-aware, exact meta-gradients, safe checkpoints,
and its gated teleport."""
from __future__ import annotations

import copy

import pytest
import torch

from metatele import checkpoints
from metatele.bench.baselines import make
from metatele.bench.metatrain import Scaled
from metatele.bench.problems import Problem
from metatele.errors import CheckpointError
from metatele.learned import build
from metatele.learned.nets import PROGRESS_CENTRES
from metatele.learned.adafac import (N_INPUTS, AdafacOptimizer, AdafacSpec, AdafacUpdate, GatedRescale,
                                     GatedSteepestTeleport, with_guards)
from metatele.outer.trainer import meta_loss, unroll_window
from metatele.optim import LearnedOptimizer
from metatele.methods.base import Horizon, Proposal
from metatele.step import inner_step
from metatele.tasks.base import Symmetry
from metatele.teleport.action import grad_norm_sq, rescale
from metatele.teleport.ascent import rescale_direction

REG = Problem("t-reg", "train", "regression", (6, 8, 8, 3), 20, n=6)
REG_BIAS = Problem("t-reg-b", "train", "regression", (6, 8, 3), 20, n=10, bias=True)


def _randomize_head(opt: AdafacOptimizer) -> None:
    with torch.no_grad():
        torch.manual_seed(3)
        opt.net.mlp[-1].weight.normal_(0, 0.5)
        opt.net.mlp[-1].bias.normal_(0, 0.5)


@pytest.mark.parametrize("problem,lr", [(REG, 1e-3), (REG_BIAS, 1e-3), (REG, 0.0316)])
def test_untrained_equals_adam(problem, lr):
    """At the default nominal lr (1e-3) and at a recipe's (the round-4 one's 10^-1.5)."""
    task = problem.sample(range(4))
    opt, adam = build(AdafacSpec("adafac", nominal_lr=lr)), make("adam", torch.full((4,), lr))
    w = task.init_weights()
    s1, s2 = opt.init_state(w), adam.init_state(w)
    w1 = w2 = w
    for t in range(5):
        r1, r2 = inner_step(opt, w1, s1, task, t), inner_step(adam, w2, s2, task, t)
        for a, b, old in zip(r1.weights, r2.weights, w1):
            assert not torch.equal(a, old)  # it moved
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-4 * lr)
        w1, s1, w2, s2 = r1.weights, r1.state, r2.weights, r2.state


def test_untrained_equals_adam_on_a_vector():
    """Any tensor shape (B, …), biases as separate vectors included."""
    opt = build(AdafacSpec("adafac"))
    rule = opt.rule
    w = [torch.randn(3, 5), torch.randn(3, 4, 2, 2)]
    g = [torch.randn(3, 5), torch.randn(3, 4, 2, 2)]
    prop, _ = rule.propose(Proposal(), g, rule.init(w), weights=w)
    for u, gi in zip(prop.update, g):  # Adam's first step: lr · g / (|g| + ε)
        torch.testing.assert_close(u, 1e-3 * gi / (gi.abs() + 1e-8))


def test_parameter_count_does_not_depend_on_shape():
    opt = build(AdafacSpec("adafac-tele"))
    names = {k: v.shape for k, v in opt.state_dict().items()}
    n = sum(p.numel() for p in opt.parameters())
    for problem in (REG, REG_BIAS, Problem("t-wide", "train", "regression", (4, 40, 40, 40, 2), 5, n=4)):
        task = problem.sample(range(2))
        w = task.init_weights()
        res = inner_step(opt, w, opt.init_state(w), task, 0)
        assert all(torch.isfinite(x).all() for x in res.weights)
        assert sum(p.numel() for p in opt.parameters()) == n
        assert {k: v.shape for k, v in opt.state_dict().items()} == names
    assert opt.net.mlp[0].in_features == N_INPUTS


def test_progress_features_reach_the_net():
    """The same state at two horizons gives different updates, and the update's gradient reaches the first layer's
    progress columns."""
    task = REG.sample(range(2))
    opt = build(AdafacSpec("adafac"))
    _randomize_head(opt)
    w = task.init_weights()
    _, g = task.loss_and_grad(w, task.data(0))
    ups = []
    for T in (5.0, 5000.0):
        rule = AdafacUpdate(opt.net, Horizon(T))
        _, state = rule.propose(Proposal(), g, rule.init(w), weights=w)  # step 0: t/T = 0 at any horizon
        prop, _ = rule.propose(Proposal(), g, state, weights=w)          # step 1: t/T = 1/T
        ups.append(prop.update)
    assert any(not torch.allclose(a, b) for a, b in zip(*ups))
    opt.zero_grad()
    sum(u.sum() for u in ups[0]).backward()
    first = opt.net.mlp[0].weight.grad
    assert first[:, -len(PROGRESS_CENTRES):].abs().sum() > 0


def test_meta_gradient_matches_finite_differences():
    """The exact (second-order) meta-gradient of a 3-step log meta-loss, in float64, against central differences,
    for the global lr scalar, the fan-in exponent and a weight of the head."""
    task = REG.sample(range(2), dtype=torch.float64)
    opt = build(AdafacSpec("adafac")).double()
    _randomize_head(opt)
    opt.double()

    def loss() -> torch.Tensor:
        w = task.init_weights()
        win = unroll_window(opt, task, w, opt.init_state(w), 0, 3, second_order=True)
        return meta_loss(win.losses, "log")

    params = [opt.net.log_gain, opt.net.fan_power, opt.net.mlp[-1].weight]
    grads = torch.autograd.grad(loss(), params)
    h = 1e-5
    for p, g in zip(params, grads):
        idx = (0, 3) if p.dim() == 2 else ()
        with torch.no_grad():
            old = p[idx].clone()
            p[idx] = old + h
            up = loss()
            p[idx] = old - h
            down = loss()
            p[idx] = old
        fd = (up - down) / (2 * h)
        assert abs(fd) > 1e-6
        torch.testing.assert_close(g[idx], fd, rtol=1e-4, atol=1e-8)


def test_scale_augmentation_keeps_the_problem():
    """Scaled(task): the same network function at true weights c·w, the loss × s."""
    task = REG.sample(range(2))
    c = [torch.tensor([2.0, 0.5]), torch.tensor([0.1, 3.0]), torch.tensor([1.0, 7.0])]
    s = torch.tensor([10.0, 1e-3])
    aug = Scaled(task, c, s)
    torch.testing.assert_close(aug.loss(aug.init_weights(), aug.data(0)), s * task.loss(task.init_weights(), task.data(0)))
    assert aug.symmetry is task.symmetry


def test_teleport_keeps_the_loss_and_is_gated_off_where_impossible():
    task = REG.sample(range(3), dtype=torch.float64)
    assert task.symmetry is Symmetry.GL
    w = task.init_weights()
    tele = GatedSteepestTeleport([torch.full((3,), 0.05, dtype=torch.float64)] * 2)
    new = tele.apply(w, task, 0)
    data = task.teleport_data(0).batch
    torch.testing.assert_close(task.loss(new, data), task.loss(w, data), rtol=1e-9, atol=1e-9)
    assert any(not torch.allclose(a, b) for a, b in zip(new, w))
    _, g_old = task.loss_and_grad(w, data)
    _, g_new = task.loss_and_grad(new, data)
    assert sum(x.pow(2).sum() for x in g_new) > sum(x.pow(2).sum() for x in g_old)  # steeper
    biased = REG_BIAS.sample(range(3))
    wb = biased.init_weights()
    assert tele.apply(wb, biased, 0) is wb and tele.skipped == [1]


DIGITS_BIAS = Problem("t-dig-b", "train", "digits", (64, 9, 7, 10), 20, batch=24, bias=True)


@pytest.mark.parametrize("problem", [REG, REG_BIAS, DIGITS_BIAS], ids=["gl", "bias-n>d0", "bias-cross-entropy"])
def test_rescale_direction_is_the_gradient_of_the_squared_gradient_norm(problem):
    """The closed form of `rescale_direction` (from the gradient alone) is the normalized autograd derivative of
    ‖∇L(diag(e^s)·W)‖² at s = 0, with and without biases, on regression with more samples than inputs and on
    mini-batch cross-entropy."""
    task = problem.sample(range(2), dtype=torch.float64)
    w, data = task.init_weights(), task.data(0)
    s = [torch.zeros(2, x.shape[1], dtype=torch.float64, requires_grad=True) for x in w[:-1]]
    _, g = task.loss_and_grad(rescale(w, s), data, create_graph=True)
    auto = torch.autograd.grad(grad_norm_sq(g).sum(), s)
    _, g0 = task.loss_and_grad(w, data)
    for d, a in zip(rescale_direction(g0), auto):
        torch.testing.assert_close(d, a / a.norm(dim=-1, keepdim=True), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("problem", [REG, REG_BIAS, DIGITS_BIAS], ids=["gl", "bias-n>d0", "bias-cross-entropy"])
def test_diag_teleport_acts_everywhere_and_keeps_the_loss(problem):
    """adafac-tele with group "diag" teleports on every task (biases, more samples than inputs, mini-batches): the
    rescaled weights differ, the loss on the step's data is unchanged to 1e-12 (float64) and ‖∇L‖² falls (it descends,
    balancing each unit's incoming and outgoing gradient norms)."""
    opt = build(AdafacSpec("adafac-tele", group="diag", gate_bias=2.0)).double()
    task = problem.sample(range(3), dtype=torch.float64)
    w = task.init_weights()
    res = inner_step(opt, w, opt.init_state(w), task, 0)
    assert isinstance(res.proposal.teleport, GatedRescale)
    moved = [x - u for x, u in zip(w, res.proposal.update)] if res.proposal.update is not None else w
    new = res.proposal.teleport.apply(moved, task, 0)
    data = task.data(0)
    assert any(not torch.allclose(a, b) for a, b in zip(new, moved))
    torch.testing.assert_close(task.loss(new, data), task.loss(moved, data), rtol=1e-12, atol=1e-12)
    _, g_old = task.loss_and_grad(moved, data)
    _, g_new = task.loss_and_grad(new, data)
    assert bool((grad_norm_sq(g_new) < grad_norm_sq(g_old)).all())


def test_diag_teleport_through_the_torch_optimizer_keeps_the_function():
    """Through `LearnedOptimizer`, an adafac-tele with group "diag" rescales an nn.Sequential with biases: every
    teleport is applied (none skipped), and the model's outputs right after a teleport equal those before it."""
    torch.manual_seed(0)
    opt_method = build(AdafacSpec("adafac-tele", group="diag", gate_bias=2.0, magnitude=0.5))
    net = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.LeakyReLU(0.1), torch.nn.Linear(7, 6),
                              torch.nn.LeakyReLU(0.1), torch.nn.Linear(6, 3))
    X, Y = torch.randn(40, 5), torch.randn(40, 3)  # more samples than any width: GL could not act exactly
    opt = LearnedOptimizer(net.parameters(), opt_method, model=net)
    for _ in range(3):
        opt.zero_grad()
        (net(X) - Y).pow(2).mean().backward()
        opt.step()
    assert opt.teleport_counts["applied"] == 3 and sum(opt.teleport_counts.values()) == 3
    rec = opt.teleports[-1]
    assert rec.result.magnitude and min(rec.result.magnitude) > 0 and rec.output_drift_full < 1e-5


def test_checkpoint_round_trip_and_untrusted_metadata(tmp_path, monkeypatch):
    opt = build(AdafacSpec("adafac-tele"))
    _randomize_head(opt)
    path = tmp_path / "adafac-tele" / checkpoints.MODEL_FILE
    checkpoints.save_model(path, opt, batches=3)
    monkeypatch.setenv("METATELE_CHECKPOINTS", str(tmp_path))
    back = checkpoints.load_pretrained("adafac-tele")
    assert isinstance(back, AdafacOptimizer) and back.name == "adafac-tele" and back.spec == opt.spec and back.teleports
    for k, v in opt.state_dict().items():
        torch.testing.assert_close(back.state_dict()[k], v)
    tensors, meta = checkpoints.read(path)
    assert "nominal_lr" not in meta["spec"]  # a spec at the default is stored as before the field existed
    for bad in ({"hidden": 10**9}, {"mix": "big"}, {"magnitude": 11.0}, {"nope": 1}, {"method": "adafac-x"},
                {"nominal_lr": -1.0}, {"nominal_lr": "1e-3"}, {"group": "so3"}):
        checkpoints.save(tmp_path / "bad.safetensors", tensors, {**meta, "spec": {**meta["spec"], **bad}})
        with pytest.raises(CheckpointError):
            checkpoints.load_model(tmp_path / "bad.safetensors")


def test_runs_in_a_torch_training_loop_as_adam(tmp_path):
    """Through `metatele.optim.LearnedOptimizer` (a checkpoint path), the untrained rule steps an nn.Sequential with
    biases exactly as torch.optim.Adam(lr=1e-3)."""
    path = tmp_path / "adafac" / checkpoints.MODEL_FILE
    checkpoints.save_model(path, build(AdafacSpec("adafac")))
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.LeakyReLU(0.1), torch.nn.Linear(7, 3))
    ref = copy.deepcopy(net)
    opt, adam = LearnedOptimizer(net.parameters(), path.parent), torch.optim.Adam(ref.parameters(), lr=1e-3)
    X, Y = torch.randn(16, 5), torch.randn(16, 3)
    for _ in range(3):
        for model, o in ((net, opt), (ref, adam)):
            o.zero_grad()
            (model(X) - Y).pow(2).mean().backward()
            o.step()
    for a, b in zip(net.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_without_the_free_term_the_update_is_a_bounded_gain_on_adam():
    """mix = 0: with any head, every element of the update has Adam's sign and a gain in [0.1, 10] on Adam's step
    (so it vanishes where Adam's does: no drift at a minimum); mix < 0 is refused."""
    opt = build(AdafacSpec("adafac", mix=0.0, nominal_lr=0.01))
    _randomize_head(opt)
    ref = build(AdafacSpec("adafac", nominal_lr=0.01))
    w = [torch.randn(3, 6, 5), torch.randn(3, 6)]
    g = [torch.randn(3, 6, 5), torch.zeros(3, 6)]
    prop, _ = opt.rule.propose(Proposal(), g, opt.rule.init(w), weights=w)
    adam, _ = ref.rule.propose(Proposal(), g, ref.rule.init(w), weights=w)
    (u, a), (u0, a0) = zip(prop.update, adam.update)
    ratio = u / a
    assert bool((ratio >= 0.1 - 1e-6).all() and (ratio <= 10 + 1e-5).all()) and not torch.equal(u, a)
    assert bool((a0 == 0).all() and (u0 == 0).all())  # a zero gradient: no step at all
    with pytest.raises(ValueError, match="mix must be 0"):
        AdafacSpec("adafac", mix=-0.1)


def test_guards_warm_up_the_step_and_floor_adams_denominator():
    """Untrained, with warmup W and floor f: Adam with the update × min(1, t/W) and the denominator
    max(√v̂, f·rms(g₀)) per tensor, computed here by hand on a gradient that falls to 1e-9 of its first."""
    W, f, lr = 4, 0.01, 1e-3
    rule = build(AdafacSpec("adafac", warmup=W, floor=f)).rule
    torch.manual_seed(0)
    w = [torch.randn(2, 5, 3), torch.randn(2, 5)]
    state = rule.init(w)
    m = [torch.zeros_like(x) for x in w]
    v = [torch.zeros_like(x) for x in w]
    g0 = None
    for t in range(1, 9):
        g = [torch.randn_like(x) * (1.0 if t == 1 else 1e-9) for x in w]
        g0 = g0 or [x.pow(2).flatten(1).mean(1).sqrt() for x in g]
        prop, state = rule.propose(Proposal(), g, state, weights=w)
        for i, (u, gi) in enumerate(zip(prop.update, g)):
            m[i], v[i] = 0.9 * m[i] + 0.1 * gi, 0.999 * v[i] + 0.001 * gi * gi
            shape = (-1,) + (1,) * (gi.dim() - 1)
            den = torch.maximum((v[i] / (1 - 0.999 ** t)).sqrt(), f * g0[i].view(shape))
            expected = lr * min(1.0, t / W) * (m[i] / (1 - 0.9 ** t)) / (den + 1e-8)
            torch.testing.assert_close(u, expected, rtol=1e-4, atol=1e-12)
    # a state as at the float floor (first gradient's RMS 1, moments of a 1e-6 gradient, long after the start):
    # without the floor Adam's step is ~lr per element; the floor makes it ~lr·1e-6/f
    g = [torch.full_like(x, 1e-6) for x in w]
    steps = []
    for floor in (0.0, f):
        r = build(AdafacSpec("adafac", floor=floor)).rule
        s = r.init(w)
        s.mom = [[torch.full_like(x, 1e-6) for _ in ms] for x, ms in zip(w, s.mom)]
        s.nu = [torch.full_like(x, 1e-12) for x in w]
        s.g0 = [torch.ones(2) for _ in w]
        s.count = torch.full((2,), 1e4)
        steps.append(r.propose(Proposal(), g, s, weights=w)[0].update[0].abs().max())
    assert steps[0] > 0.9 * lr and steps[1] < 2e-4 * lr


def test_guard_settings_are_validated_and_kept_in_checkpoints(tmp_path):
    for bad in ({"warmup": -1}, {"warmup": 2.5}, {"floor": -0.1}, {"floor": 2.0}, {"floor": True}):
        with pytest.raises(ValueError):
            AdafacSpec("adafac", **bad)
    opt = build(AdafacSpec("adafac-tele", warmup=5, floor=0.01))
    checkpoints.save_model(tmp_path / "g.safetensors", opt)
    back = checkpoints.load_model(tmp_path / "g.safetensors")
    assert (back.spec.warmup, back.spec.floor) == (5, 0.01) and back.spec == opt.spec
    old = build(AdafacSpec("adafac"))  # a checkpoint written before the guards has neither key
    assert "warmup" not in old.spec.to_dict() and "floor" not in old.spec.to_dict()


def test_with_guards_keeps_the_trained_rule_and_warms_up_a_torch_loop():
    """`with_guards` copies the meta-parameters and sets the guards; in a user's loop its first step is the
    unguarded one / warmup (at step 1 no element of these gradients is below the floor)."""
    opt = build(AdafacSpec("adafac"))  # with the free term (mix 0.1), which warms up too
    _randomize_head(opt)
    guarded = with_guards(opt, 5, 1e-6)
    assert (guarded.spec.warmup, guarded.spec.floor, guarded.name) == (5, 1e-6, "adafac")
    assert all(torch.equal(a, b) for a, b in zip(opt.state_dict().values(), guarded.state_dict().values()))
    with pytest.raises(TypeError, match="adafac"):
        with_guards(make("adam", torch.ones(1)), 5, 0.01)
    moves = []
    for method in (opt, guarded):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LeakyReLU(0.1), torch.nn.Linear(8, 2))
        before = [p.detach().clone() for p in net.parameters()]
        o = LearnedOptimizer(net.parameters(), method)
        x = torch.randn(16, 4)
        o.zero_grad()
        net(x).pow(2).mean().backward()
        o.step()
        moves.append(torch.cat([(p.detach() - b).flatten() for p, b in zip(net.parameters(), before)]))
    torch.testing.assert_close(moves[1], moves[0] / 5, rtol=1e-4, atol=1e-9)
