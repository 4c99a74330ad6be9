"""PES (`metatele.outer.pes`): the estimate's expectation is the meta-gradient of the whole trajectory — also for a
later window, where truncated BPTT's gradient is biased — and a PES run learns and resumes like truncated BPTT."""
from __future__ import annotations

import pytest
import torch

from metatele import config, step, tasks, train
from metatele.errors import ConfigError
from metatele.evaluation.stats import summarize
from metatele.methods.base import set_horizon
from metatele.outer.pes import batch_step, pes_batch
from metatele.outer.trainer import detach, meta_loss, train_batch, unroll_window
from metatele.tasks import seeds


class Recorder(torch.optim.SGD):
    """An outer optimizer that only records the estimate it is given (lr 0: the meta-parameters stay put)."""

    def __init__(self, params: list[torch.nn.Parameter]) -> None:
        super().__init__(params, lr=0.0)
        self.params, self.grads = params, []

    def step(self, closure=None):  # noqa: ANN001, ANN201
        self.grads.append(torch.cat([p.grad.reshape(-1) for p in self.params]).clone())


def _flat(grads) -> torch.Tensor:  # noqa: ANN001
    return torch.cat([g.reshape(-1) for g in grads])


@pytest.mark.slow
def test_pes_estimate_is_unbiased_for_the_whole_trajectory():
    """Two windows of 5 steps, 512 particles (antithetic), float64: the projection of each window's estimate on the
    exact meta-gradient of that window's meta-loss through the *whole* trajectory is ≈ 1 (measured 0.9/0.8 at 256
    particles), and clearly closer to it than truncated BPTT's gradient of window 2 (0.37 of it here)."""
    torch.set_default_dtype(torch.float64)
    try:
        cfg = config.load(method="lstm-update", hidden=1, widths=[3, 3, 2], n=3, steps=10, unroll=5, batch=2,
                          estimator="pes", particles=512, sigma=0.01, update_form="gain", preprocessing="rms",
                          clip=1e9)
        model = train.build(cfg).model.double()
        params = list(model.parameters())
        task = cfg.family.sample(range(2), dtype=torch.float64)
        opt = Recorder(params)
        pes_batch(model, opt, task, cfg.trainer, 10)
        set_horizon(model, 10)
        w = task.init_weights()
        w1 = unroll_window(model, task, w, model.init_state(w), 0, 5)
        w2 = unroll_window(model, task, w1.weights, w1.state, 5, 5)
        g1 = _flat(torch.autograd.grad(meta_loss(w1.losses, "log"), params, retain_graph=True))
        g2 = _flat(torch.autograd.grad(meta_loss(w2.losses, "log"), params, retain_graph=True))
        cut = unroll_window(model, task, detach(w1.weights), detach(w1.state), 5, 5)
        truncated = _flat(torch.autograd.grad(meta_loss(cut.losses, "log"), params))
    finally:
        torch.set_default_dtype(torch.float32)
    proj = [float(e @ g / (g @ g)) for e, g in zip(opt.grads, (g1, g2))]
    trunc = float(truncated @ g2 / (g2 @ g2))
    assert all(0.7 < p < 1.3 for p in proj), proj
    assert abs(proj[1] - 1) < abs(trunc - 1) - 0.2, (proj, trunc)


def test_pes_leaves_the_meta_parameters_unperturbed_and_is_deterministic():
    cfg = config.load(method="lstm-update", hidden=4, widths=[4, 4, 3], n=4, steps=10, unroll=5, batch=2,
                      estimator="pes", particles=4, eval_every=0)
    runs = [train.build(cfg) for _ in range(2)]
    for r in runs:
        opt = Recorder(list(r.model.parameters()))
        before = [p.detach().clone() for p in r.model.parameters()]
        stats = pes_batch(r.model, opt, tasks.sample([3, 4], widths=(4, 4, 3), n=4), cfg.trainer, 10)
        assert stats["windows"] == 2 and stats["skipped"] == 0
        assert all(torch.equal(a, b) for a, b in zip(before, r.model.parameters()))
        r.grads = opt.grads
    assert all(torch.equal(a, b) for a, b in zip(runs[0].grads, runs[1].grads))
    assert batch_step(cfg.trainer) is pes_batch
    assert batch_step(config.load(method="lstm-update").trainer) is train_batch


def test_pes_meta_training_lowers_heldout_loss():
    """PES alone meta-trains a tiny lstm-update (gain form: untrained, plain GD) on 4-4-3 tasks: the held-out mean
    log10 loss at step 20 drops by more than 0.5 (measured 1.09 → 0.17)."""
    cfg = config.load(method="lstm-update", widths=[4, 4, 3], n=4, trajectories=160, batch=16, steps=20, unroll=10,
                      hidden=2, eval_every=0, estimator="pes", particles=8, sigma=0.05, meta_lr=0.1,
                      preprocessing="rms", update_form="gain")
    run = train.build(cfg)
    held = cfg.family.sample(range(seeds.VALID_FIRST_SEED, seeds.VALID_FIRST_SEED + 16))
    before = summarize(step.rollout(run.model, held, 20).loss[20])["log10_loss_mean"]
    for b in range(cfg.trainer.n_batches):
        pes_batch(run.model, run.opt, cfg.family.sample(seeds.train_seeds(0, b * 16, 16)), cfg.trainer)
    after = summarize(step.rollout(run.model, held, 20).loss[20])["log10_loss_mean"]
    assert after < before - 0.5, (before, after)


def test_pes_settings_are_checked():
    with pytest.raises(ConfigError, match="particles"):
        config.load(method="lstm-update", estimator="pes", particles=3)
    with pytest.raises(ConfigError, match="estimator"):
        config.load(method="lstm-update", estimator="es")
    with pytest.raises(ConfigError, match="sigma"):
        config.load(method="lstm-update", sigma=0.0)
