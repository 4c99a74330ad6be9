"""The long-horizon levers of meta-training: sampled trajectory lengths, the loss cap that freezes exploding
training tasks, and update forms whose untrained optimizer is exactly GD."""
from __future__ import annotations

import pytest
import torch

from metatele import config, step, tasks, train
from metatele.outer.trainer import horizon, meta_train, train_batch
from metatele.methods import baseline
from metatele.tasks.seeds import EVAL_FIRST_SEED, train_seeds


def test_sampled_horizons_are_deterministic_multiples_of_unroll_within_range():
    cfg = config.load(method="lstm-update", steps=1000, min_steps=20, unroll=10)
    hs = [horizon(cfg.trainer, b) for b in range(400)]
    assert hs == [horizon(cfg.trainer, b) for b in range(400)]
    assert all(20 <= h <= 1000 and h % 10 == 0 for h in hs)
    logs = torch.tensor(hs, dtype=torch.float64).log()
    mid = (torch.log(torch.tensor(20.0)) + torch.log(torch.tensor(1000.0))) / 2
    assert abs(float(logs.median()) - float(mid)) < 0.3  # log-uniform: the median sits at the geometric middle
    assert horizon(config.load(method="lstm-update", steps=100).trainer, 7) == 100


@pytest.mark.parametrize("form", ["residual", "gain"])
def test_untrained_nominal_forms_are_plain_gd(form):
    cfg = config.load(method="lstm-update", hidden=16, preprocessing="rms", update_form=form)
    model = train.build(cfg).model
    task = tasks.sample(range(EVAL_FIRST_SEED, EVAL_FIRST_SEED + 4))
    ours = step.rollout(model, task, 20).loss
    gd = step.rollout(baseline("gd", lr=3e-4), task, 20).loss
    torch.testing.assert_close(ours, gd, rtol=1e-4, atol=0)


def test_loss_cap_turns_a_diverging_window_into_a_learning_signal():
    kw = dict(method="lstm-update", hidden=8, steps=20, unroll=10, out_scale=1e15, batch=8)
    huge = {**kw, "out_scale": 1e4}  # large but finite updates: explode within the window
    task = tasks.sample(train_seeds(0, 0, 8))
    skipped = train_batch(*_model_opt(config.load(**kw)), task, config.load(**kw).trainer)
    assert skipped["skipped"] == 1  # without a cap the exploding window gives no update
    cfg = config.load(**kw, loss_cap=100.0)  # the same updates are rejected (non-finite loss): no NaN, no skip
    model, opt = _model_opt(cfg)
    stats = train_batch(model, opt, task, cfg.trainer)
    assert stats["skipped"] == 0 and stats["frozen"] == 8 and stats["windows"] == 2
    assert all(torch.isfinite(p).all() for p in model.parameters())
    cfg = config.load(**huge, loss_cap=100.0)  # finite explosions: frozen after the jump, which is a signal
    model, opt = _model_opt(cfg)
    before = [p.detach().clone() for p in model.parameters()]
    stats = train_batch(model, opt, task, cfg.trainer)
    assert stats["skipped"] == 0 and stats["frozen"] > 0 and stats["grad_norm"] > 0
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def _model_opt(cfg):
    run = train.build(cfg)
    return run.model, run.opt


@pytest.mark.slow
def test_tiny_recipe_keeps_improving_past_its_training_horizon():
    """The long-horizon recipe, shrunk: meta-trained on trajectories of at most 30 steps, the optimizer learns
    (beats its untrained self, which is GD, at step 30) and its loss at step 150 (5× the horizon) is no higher
    than at step 30, on unseen tasks, with no task above its initial loss."""
    cfg = config.load(method="lstm-update-tele", hidden=16, steps=30, min_steps=10, unroll=10, batch=8,
                      trajectories=96, meta_lr=3e-3, preprocessing="rms", update_form="gain", loss_cap=100.0,
                      teleport_decay=10.0, gate=True, eval_every=0, ckpt_every=0)
    run = train.build(cfg)
    family = cfg.family
    unseen = family.sample(range(EVAL_FIRST_SEED, EVAL_FIRST_SEED + 16))
    with torch.no_grad():
        untrained = step.rollout(run.model, unseen, 30).loss[30].log10().mean()
    meta_train(cfg.trainer, run.model, run.opt, run.progress, after_batch=lambda *a: None, stop=lambda: False,
               sample=lambda first, count: family.sample(train_seeds(cfg.trainer.seed, first, count)))
    with torch.no_grad():
        loss = step.rollout(run.model, unseen, 150).loss
    assert torch.isfinite(loss).all()
    at_horizon, at_5x = loss[30].log10().mean(), loss[150].log10().mean()
    assert at_horizon < untrained - 0.05  # it learned something
    assert at_5x <= at_horizon
    assert (loss[150] <= loss[0]).all()
