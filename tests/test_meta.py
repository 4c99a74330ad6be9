from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from metatele import checkpoints, config, step, tasks, train
from metatele.evaluation.stats import summarize
from metatele.learned import LEARNED, build
from metatele.outer.trainer import meta_loss, train_batch, unroll_window
from metatele.tasks import seeds
from metatele.teleport.action import teleport

METHODS = tuple(LEARNED)

SMALL = (4, 4, 3)


def small_setup(method: str, exact: bool = True, preprocessing: str = "logsign", gate: bool = False,
                progress: bool = False):
    torch.manual_seed(1)
    keys = dict(widths=SMALL, hidden=5, preprocessing=preprocessing, magnitude=0.1, exact=exact, gate=gate,
                out_scale=0.01, progress=progress)
    model = build(LEARNED[method].spec.from_config(method, keys)).double()
    task = tasks.sample([5, 6], widths=SMALL, n=4, dtype=torch.float64)
    for w in task.weights:
        w.mul_(0.5)  # keep the 3-step unroll in a smooth, moderate-loss region
    return model, task


def unrolled_meta_loss(model, task, kind="log"):
    win = unroll_window(model, task, task.weights, model.init_state(task.weights), 0, 3)
    return meta_loss(win.losses, kind)


@pytest.mark.parametrize("method,exact,prep,gate,progress", [(m, True, "logsign", False, False) for m in METHODS]
                         + [("lstm-update-tele", False, "raw", True, False), ("lstm-lr-tele", True, "raw", False, False),
                            ("lstm-update-tele", True, "rms", True, True), ("lstm-lr-tele", True, "raw", False, True)])
def test_meta_gradient_matches_finite_differences(method, exact, prep, gate, progress):
    model, task = small_setup(method, exact, prep, gate, progress)
    model.horizon = 7  # with progress features: t/T crosses several centres within the 3-step window
    params = list(model.parameters())
    model.zero_grad()
    unrolled_meta_loss(model, task).backward()
    g = [p.grad.clone() for p in params]
    gen = torch.Generator().manual_seed(2)
    for _ in range(2):  # random directions over all parameters
        v = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
        analytic = sum((a * b).sum() for a, b in zip(g, v))
        h = 1e-5
        vals = []
        with torch.no_grad():
            for sgn in (1, -1):
                for p, d in zip(params, v):
                    p.add_(sgn * h * d)
                vals.append(unrolled_meta_loss(model, task))
                for p, d in zip(params, v):
                    p.sub_(sgn * h * d)
        fd = (vals[0] - vals[1]) / (2 * h)
        assert abs(float(fd - analytic)) <= 1e-6 * abs(float(analytic)), (float(fd), float(analytic))


def test_learned_lr_meta_gradient_matches_higher():
    higher = pytest.importorskip("higher")
    model, task = small_setup("lstm-lr-tele")
    model.zero_grad()
    unrolled_meta_loss(model, task, kind="sum").backward()
    ours = [p.grad.clone() for p in model.parameters()]

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.ws = torch.nn.ParameterList([torch.nn.Parameter(w.clone()) for w in task.weights])

    net = Net()
    model.zero_grad()
    data = task.teleport_data(0)
    with higher.innerloop_ctx(net, torch.optim.SGD(net.parameters(), lr=1.0), copy_initial_weights=True) as (fnet, opt):
        state, losses = model.init_state(task.weights), []
        for _ in range(3):
            ws = list(fnet.parameters())
            L = task.loss(ws, task.data(0))
            grads = torch.autograd.grad(L.sum(), ws, create_graph=True)
            prop, state = model.propose(ws, grads, state)
            # higher's differentiable SGD with the lr overridden by the learned (per-task) tensor
            opt.step(L.sum(), override={"lr": [prop.info["lr"][:, None, None]]})
            tele = prop.teleport
            fnet.update_params(teleport(list(fnet.parameters()), task.X, tele.T, tele.magnitude, act=task.activation,
                                        X_pinv=data.X_pinv))
            losses.append(task.loss(list(fnet.parameters()), task.data(0)))
        meta_loss(torch.stack(losses), "sum").backward()
    for a, b in zip(ours, (p.grad for p in model.parameters())):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-12 * float(b.abs().max()))


def test_short_meta_training_lowers_heldout_loss():
    cfg = config.load(method="lstm-update", trajectories=96, batch=16, steps=20, unroll=10, hidden=64, eval_every=0)
    run = train.build(cfg)
    held = tasks.sample(range(seeds.VALID_FIRST_SEED, seeds.VALID_FIRST_SEED + 16))
    before = summarize(step.rollout(run.model, held, 20).loss[20])["log10_loss_mean"]
    for b in range(cfg.trainer.n_batches):
        train_batch(run.model, run.opt, tasks.sample(seeds.train_seeds(0, b * 16, 16)), cfg.trainer)
    after = summarize(step.rollout(run.model, held, 20).loss[20])["log10_loss_mean"]
    assert after < before - 0.5, (before, after)


@pytest.mark.parametrize("method", METHODS)
def test_save_load_round_trip_is_bit_identical(tmp_path, method):
    cfg = config.load(method=method, hidden=16, trajectories=16, batch=8, steps=10, eval_every=0)
    run = train.build(cfg)
    train_batch(run.model, run.opt, tasks.sample(seeds.train_seeds(0, 0, 8)), cfg.trainer)
    checkpoints.save_model(tmp_path / "m.safetensors", run.model)
    loaded = checkpoints.load_model(tmp_path / "m.safetensors", method=method)
    task = tasks.sample(range(10**9, 10**9 + 4))
    a = step.rollout(run.model, task, 5)
    b = step.rollout(loaded, task, 5)
    assert torch.equal(a.loss, b.loss)


@pytest.mark.parametrize("recipe", [{}, dict(meta_lr_final=0.1, min_steps=10, progress=True, preprocessing="rms",
                                            update_form="gain", loss_cap=100.0, gate=True, teleport_decay=50.0),
                                    dict(estimator="pes", particles=4, loss_cap=100.0, min_steps=10)],
                         ids=["plain", "shipped-recipe", "pes"])
def test_resume_reproduces_uninterrupted_run(tmp_path, recipe):
    """Also with the shipped recipe's levers: a decaying meta-lr (the stored Adam lr is then not the config's),
    sampled horizons and progress features."""
    kw = dict(method="lstm-update-tele", hidden=16, trajectories=40, batch=8, steps=20, unroll=10,
              eval_every=2, ckpt_every=1, **recipe)
    cfg = config.load(**kw)
    full = train.run(cfg, tmp_path / "full", progress=False)
    part = train.run(cfg, tmp_path / "part", progress=False, max_batches=2)
    assert part.progress.batches_done == 2
    resumed = train.run(cfg, tmp_path / "part", resume=True, progress=False)
    assert resumed.progress.batches_done == full.progress.batches_done == 5
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k
    assert (tmp_path / "full" / "model.safetensors").read_bytes() == (tmp_path / "part" / "model.safetensors").read_bytes()


def test_training_seeds_disjoint_from_evaluation():
    used = seeds.train_seeds(99, 0, seeds.TRAIN_STRIDE)
    assert max(used) < seeds.EVAL_FIRST_SEED <= seeds.VALID_FIRST_SEED
    assert seeds.overlaps_training(5, 10) and not seeds.overlaps_training(seeds.EVAL_FIRST_SEED, 10**6)
    with pytest.raises(ValueError):
        seeds.train_seeds(100, 0, 1)


def test_progress_bar_moves_within_a_batch(tmp_path, capsys):
    """A batch of 4 windows: the bar shows each window as a quarter of a batch (the default config's batches take
    minutes), and lands on whole batches."""
    cfg = config.load(method="lstm-update", hidden=8, trajectories=8, batch=4, steps=20, unroll=5, eval_every=0,
                      ckpt_every=0)
    train.run(cfg, tmp_path / "out", logdir=tmp_path / "runs", progress=True)
    bar = capsys.readouterr().err.replace("\r", "\n")
    for shown in ("0.25/2 batches", "0.50/2", "0.75/2", "1.25/2", "2.00/2"):
        assert shown in bar, bar


@pytest.mark.slow
def test_train_quick_meta_trains_a_tiny_optimizer(tmp_path):
    """`metatele train --quick` (metatele/configs/quick.toml): the held-out loss falls as it meta-trains."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "metatele", "train", "--quick", "--out", "ck", "--no-progress"],
                       cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    history = checkpoints.load_model(tmp_path / "ck").metadata["history"]
    assert len(history) == 4
    first, last = history[0]["log10_loss_mean_step20"], history[-1]["log10_loss_mean_step20"]
    assert last < first - 0.2, history


@pytest.mark.parametrize("method", METHODS)
def test_meta_gradient_is_finite_through_exactly_zero_gradients(method):
    """The failure of higher #125 and torchopt #26: sqrt at 0 inside RMS or Adam-like features gives an
    infinite derivative, and ∞·0 a NaN meta-gradient. Hidden unit 0 of each task is dead (its row of W1 and
    column of W2 are zero), so its coordinates' gradients are exactly zero at the first step."""
    model, task = small_setup(method)
    for w in task.weights:
        w.requires_grad_(False)
    task.weights[0][:, 0, :] = 0.0
    task.weights[1][:, :, 0] = 0.0
    grads = task.loss_and_grad(task.weights, task.data(0))[1]
    assert (grads[0][:, 0, :] == 0).all() and (grads[1][:, :, 0] == 0).all() and grads[0].abs().sum() > 0
    model.zero_grad()
    unrolled_meta_loss(model, task).backward()
    named = [(n, p.grad) for n, p in model.named_parameters() if p.grad is not None]
    assert named and all(torch.isfinite(g).all() for _, g in named), [n for n, g in named if not torch.isfinite(g).all()]
    assert any(g.abs().sum() > 0 for _, g in named)
