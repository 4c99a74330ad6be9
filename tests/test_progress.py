"""Progress features of t/T in the paper's LSTMs (issue 29): they reach m1 and m2, every front end tells the method
the length T of its run, and a checkpoint written without them (round 2) loads and runs exactly as before."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from metatele import checkpoints, config, step, tasks, train
from metatele.evaluation.compare import Entry, evaluate
from metatele.learned import build
from metatele.learned.apply import optimize_
from metatele.learned.lstm import LSTMSpec
from metatele.learned.nets import PROGRESS_CENTRES, progress_features
from metatele.methods import DEFAULT_HORIZON, set_horizon
from metatele.methods.base import Proposal
from metatele.optim import LearnedOptimizer
from metatele.outer.trainer import meta_train, train_batch
from metatele.tasks.seeds import EVAL_FIRST_SEED, train_seeds

WIDTHS = (4, 4, 3)


def _randomized(spec: LSTMSpec) -> torch.nn.Module:
    """The model with every parameter random (the zero-initialized heads would hide what the LSTMs read), and a
    step size at which the small tasks descend."""
    torch.manual_seed(0)
    model = build(spec).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.3 * torch.randn_like(p))
        if hasattr(getattr(model, "update", None), "log_lr"):
            model.update.log_lr.fill_(-8.0)
    return model


def _task() -> tasks.RegressionTasks:
    return tasks.sample([3, 4], widths=WIDTHS, n=4, dtype=torch.float64)


def test_progress_features_are_velo_tanh_of_t_over_T():
    t = torch.tensor([0.0, 50.0, 100.0])
    f = progress_features(t, 100.0)
    c = torch.tensor(PROGRESS_CENTRES)
    assert f.shape == (3, len(PROGRESS_CENTRES))
    assert torch.allclose(f, torch.tanh(10 * (t[:, None] / 100.0 - c)))


@pytest.mark.parametrize("method", ["lstm-update-tele", "lstm-lr-tele"])
def test_progress_features_reach_m1_and_m2(method):
    """The same gradients and state at two horizons give a different update and a different group element, and
    the derivative of both with respect to the progress columns of each LSTM's input weights, and to each net's
    schedule head, is non-zero."""
    model = _randomized(LSTMSpec(method, widths=WIDTHS, hidden=6, preprocessing="rms", gate=True, progress=True,
                                 update_form="gain"))
    task = _task()
    w = task.init_weights()
    _, g = task.loss_and_grad(w, task.data(0))
    outs = []
    for T in (3.0, 3000.0):
        model.horizon = T
        state = model.init_state(w)
        _, state = model.propose(w, g, state)  # t = 0: t/T is 0 at every horizon
        prop, _ = model.propose(w, g, state)   # t = 1
        outs.append(prop)
    a, b = outs
    assert any(not torch.allclose(x, y) for x, y in zip(a.update, b.update))     # m1 (or lr-tele's step size)
    assert any(not torch.allclose(x, y) for x, y in zip(a.teleport.T, b.teleport.T))  # m2
    model.zero_grad()
    (sum(u.sum() for u in a.update) + sum(t.pow(2).sum() for t in a.teleport.T)
     + sum(m.sum() for m in a.teleport.magnitude)).backward()
    nets = ([model.update] if method == "lstm-update-tele" else []) + list(model.tele)
    for net in nets:
        cols = net.lstm.cell1.weight_ih.grad[:, -len(PROGRESS_CENTRES):]
        assert cols.abs().sum() > 0
        assert net.schedule.weight.grad.abs().sum() > 0  # the learned schedule of the step size / gate


def test_without_progress_the_horizon_changes_nothing():
    model = _randomized(LSTMSpec("lstm-update-tele", widths=WIDTHS, hidden=6, preprocessing="rms", gate=True))
    task = _task()
    model.horizon = 5
    a = step.rollout(model, task, 6).loss
    model.clock.pinned = True  # rollout would otherwise reset T to its 6 steps
    model.horizon = 5000
    b = step.rollout(model, task, 6).loss
    assert torch.equal(a, b)


def test_every_front_end_tells_the_method_its_horizon():
    """rollout(…, steps), evaluate (compare/eval --steps), the trainer (the batch's trajectory length), optimize_
    (a user's nn.Sequential) and LearnedOptimizer(total_steps=…) set T; a pinned horizon is left alone."""
    model = _randomized(LSTMSpec("lstm-update", widths=WIDTHS, hidden=6, preprocessing="rms", progress=True))
    task = _task()
    step.rollout(model, task, 7)
    assert model.horizon == 7
    evaluate([Entry(model, {})], task, 9, progress=False)
    assert model.horizon == 9
    cfg = config.load(method="lstm-update", widths=list(WIDTHS), n=4, hidden=6, preprocessing="rms", progress=True,
                      steps=20, unroll=10, batch=2, update_form="gain")
    run = train.build(cfg)
    train_batch(run.model, run.opt, cfg.family.sample([1, 2]), cfg.trainer, 10)
    assert run.model.horizon == 10
    net = torch.nn.Sequential(torch.nn.Linear(4, 4, bias=False), torch.nn.LeakyReLU(0.1), torch.nn.Linear(4, 3, bias=False))
    optimize_(net, model.float(), torch.rand(4, 4), torch.rand(4, 3), 11, loss="squared")
    assert model.horizon == 11
    params = [torch.nn.Parameter(w[0].float().clone()) for w in task.init_weights()]
    opt = LearnedOptimizer(params, model, total_steps=42)
    assert model.horizon == 42
    LearnedOptimizer(params, model)
    assert model.horizon == DEFAULT_HORIZON
    model.clock.pinned = True
    set_horizon(model, 3)
    assert model.horizon == DEFAULT_HORIZON
    with pytest.raises(ValueError, match="total_steps"):
        LearnedOptimizer(params, model, total_steps=0)
    for bad in (0, -3.0, float("nan"), float("inf"), True, "100"):
        with pytest.raises(ValueError, match="horizon"):
            model.horizon = bad
    del opt


def test_learned_optimizer_counts_steps_for_the_progress_features():
    """In one's own loop the method's step counter advances with every step, as in a rollout: the two give the same
    weights step for step (B = 1, float64 model viewed in float32 by the optimizer, so compare in float32)."""
    model = _randomized(LSTMSpec("lstm-update", widths=WIDTHS, hidden=6, preprocessing="rms", progress=True,
                                 update_form="gain")).float()
    task = tasks.sample([3], widths=WIDTHS, n=4)
    params = [torch.nn.Parameter(w[0].clone()) for w in task.init_weights()]
    opt = LearnedOptimizer(params, model, total_steps=5, max_loss_ratio=None)
    ours = []
    for t in range(5):
        opt.zero_grad()
        loss = task.loss([p[None] for p in params], task.data(t)).sum()
        loss.backward()
        opt.step()
        ours.append(float(task.loss([p.detach()[None] for p in params], task.data(t + 1))))
    ref = step.rollout(model, task, 5).loss[1:, 0]
    assert ref[-1] < ref[0]
    assert torch.allclose(torch.tensor(ours), ref, rtol=1e-5)


def test_round2_checkpoint_without_progress_loads_and_runs_unchanged(tmp_path):
    """A model without progress features is stored in the round-2 layout (no "progress" key), and a file in that
    layout loads as a model without them that rolls out exactly as the one saved."""
    model = _randomized(LSTMSpec("lstm-update-tele", widths=WIDTHS, hidden=6, preprocessing="rms", gate=True,
                                 teleport_decay=50.0, update_form="gain")).float()
    path = tmp_path / "model.safetensors"
    checkpoints.save_model(path, model)
    with safe_open(str(path), "pt") as f:
        spec = json.loads(f.metadata()["metatele"])["spec"]
    assert "progress" not in spec and spec["method"] == "lstm-update-tele"
    loaded = checkpoints.load_model(path)
    assert loaded.spec == model.spec and loaded.spec.progress is False
    task = tasks.sample([3, 4], widths=WIDTHS, n=4)
    loss = step.rollout(model, task, 12).loss
    assert torch.isfinite(loss).all() and torch.equal(loss, step.rollout(loaded, task, 12).loss)
    with_progress = build(LSTMSpec("lstm-update-tele", widths=WIDTHS, hidden=6, progress=True))
    checkpoints.save_model(tmp_path / "new.safetensors", with_progress)
    assert checkpoints.load_model(tmp_path / "new.safetensors").spec.progress is True


@pytest.mark.slow
def test_tiny_horizon_aware_config_beats_its_blind_twin_at_its_short_horizon():
    """The same tiny lstm-update config (centred law, trajectories of 10..100 steps, 320 of them) meta-trained with
    and without progress features: on unseen tasks, the horizon-aware one is lower at the short T = 10, told T.
    (Measured gaps in log10 loss at T = 10 over seeds 0, 1, 2: 0.13, 0.18, 0.25.)"""
    final = {}
    for progress in (False, True):
        cfg = config.load(method="lstm-update", law="centred", hidden=16, steps=100, min_steps=10, unroll=10, batch=8,
                          trajectories=320, meta_lr=3e-3, preprocessing="rms", update_form="gain", loss_cap=100.0,
                          eval_every=0, ckpt_every=0, progress=progress)
        torch.manual_seed(0)
        run = train.build(cfg)
        meta_train(cfg.trainer, run.model, run.opt, run.progress, after_batch=lambda *a: None, stop=lambda: False,
                   sample=lambda first, count: cfg.family.sample(train_seeds(cfg.trainer.seed, first, count)))
        unseen = cfg.family.sample(range(EVAL_FIRST_SEED, EVAL_FIRST_SEED + 32))
        with torch.no_grad():
            loss = step.rollout(run.model, unseen, 10).loss
        assert torch.isfinite(loss).all()
        final[progress] = float(loss[10].log10().mean())
    assert final[True] < final[False] - 0.05, final
