"""The benchmark suite: problems, batched baselines equal torch.optim, disjoint seeds, the field's statistics, and
`metatele bench --quick` end to end."""
from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from metatele.bench import problems, run, scores
from metatele.bench.baselines import BASELINES, LR_GRID, make
from metatele.bench.metatrain import (MetaTrainConfig, _averaged, iqm_vs_adam, meta_train, resumed_config,
                                      tuned_adam_finals, validation_runs)
from metatele.bench.problems import SUITE, Problem
from metatele import checkpoints
from metatele.errors import ConfigError, TrainStateError, TrainStateExistsError
from metatele.learned import build
from metatele.learned.adafac import AdafacSpec
from metatele.step import inner_step, rollout
from metatele.tasks.seeds import TRAIN_SEEDS

ROOT = Path(__file__).resolve().parent.parent


def test_suite_spans_what_it_must():
    widths = [d for p in SUITE for d in p.widths[1:-1]]
    assert min(widths) <= 8 and max(widths) >= 256
    depths = {p.hidden_layers for p in SUITE}
    assert min(depths) == 1 and max(depths) == 6
    assert {p.law for p in SUITE if p.kind == "regression"} == {"paper", "normal-init", "centred", "teacher"}
    assert any(p.kind == "regression" and p.n > p.widths[0] for p in SUITE)
    assert {"mnist5k", "digits", "fashion-mnist"} <= {p.kind for p in SUITE}
    assert any(p.bias for p in SUITE) and any(not p.bias for p in SUITE)
    for split in ("train", "validation", "heldout"):
        assert any(p.split == split for p in SUITE)
    assert len({p.name for p in SUITE}) == len(SUITE)
    assert LR_GRID[0] == pytest.approx(1e-5) and LR_GRID[-1] == pytest.approx(1.0) and len(LR_GRID) == 11


def test_seed_ranges_are_disjoint():
    ranges = [range(problems.REPORT_FIRST_SEED, problems.REPORT_FIRST_SEED + 10**6),
              range(problems.TUNE_FIRST_SEED, problems.TUNE_FIRST_SEED + 10**6),
              range(problems.SELECT_FIRST_SEED, problems.SELECT_FIRST_SEED + 10**6), TRAIN_SEEDS]
    for i, a in enumerate(ranges):
        for b in ranges[i + 1:]:
            assert a.stop <= b.start or b.stop <= a.start


def test_biased_tasks_match_an_nn_sequential():
    p = Problem("t", "train", "digits", (64, 12, 10), 5, batch=16, bias=True)
    task = p.sample([11])
    w = task.init_weights()
    net = nn.Sequential(nn.Linear(64, 12), nn.LeakyReLU(0.1), nn.Linear(12, 10))
    with torch.no_grad():
        for lin, wm in zip((net[0], net[2]), w):
            lin.weight.copy_(wm[0, :, :-1])
            lin.bias.copy_(wm[0, :, -1])
    d = task.data(3)
    ref = nn.functional.cross_entropy(net(d.X[0].T), d.Y[0])
    torch.testing.assert_close(task.loss(w, d)[0], ref)


@pytest.mark.parametrize("kind", BASELINES)
def test_batched_baselines_equal_torch_optim(kind):
    """Each task of a batch, at its own lr, follows torch.optim's trajectory."""
    p = Problem("t", "train", "regression", (5, 7, 2), 4, n=6, bias=True)
    lrs = torch.tensor([1e-3, 3e-2])
    task = p.sample([1, 1])
    method = make(kind, lrs)
    w = task.init_weights()
    state = method.init_state(w)
    for t in range(4):
        res = inner_step(method, w, state, task, t)
        w, state = res.weights, res.state
    for b, lr in enumerate(lrs.tolist()):
        params = [x[b].clone().requires_grad_() for x in task.init_weights()]
        opt = {"adam": lambda: torch.optim.Adam(params, lr=lr), "adamw": lambda: torch.optim.AdamW(params, lr=lr),
               "sgd-momentum": lambda: torch.optim.SGD(params, lr=lr, momentum=0.9),
               "rmsprop": lambda: torch.optim.RMSprop(params, lr=lr)}[kind]()
        for t in range(4):
            opt.zero_grad()
            d = task.data(t)
            task.loss([q[None] for q in params], type(d)(d.X[b:b + 1], d.Y[b:b + 1])).sum().backward()
            opt.step()
        for ours, ref in zip(w, params):
            torch.testing.assert_close(ours[b], ref.detach(), rtol=1e-5, atol=1e-6)


def test_tuning_picks_the_best_lr_of_the_grid():
    p = Problem("t", "train", "regression", (4, 6, 2), 15, n=4)
    grid = (1e-3, 1e-2, 1e-1)
    best = run.tune(p, "adam", seeds=2, grid=grid)
    seeds = range(problems.TUNE_FIRST_SEED, problems.TUNE_FIRST_SEED + 2)
    score = {lr: float(rollout(make("adam", torch.full((2,), lr)), p.sample(seeds), 15).loss[-1].log10().mean())
             for lr in grid}
    assert best == min(score, key=score.get)


def test_minibatch_problems_report_their_eval_set_loss():
    """A mini-batch problem reports, at every step, the loss of the current weights on its fixed evaluation set (the
    same samples for any number of tasks), not the mini-batch loss; a full-batch problem reports its training loss."""
    p = Problem("t", "train", "digits", (64, 12, 10), 3, batch=16)
    task = p.sample([5, 6])
    seen: list[list[torch.Tensor]] = []
    traj = run.trajectory(p, make("adam", torch.full((2,), 1e-2)), task, 3)
    rollout(make("adam", torch.full((2,), 1e-2)), task, 3, callback=lambda t, w: seen.append(w))
    batch = p.eval_batch(2)
    assert batch.X.shape == (2, 64, min(problems.EVAL_SAMPLES, 1797))
    torch.testing.assert_close(p.eval_batch(1).X[0], batch.X[1])
    expected = torch.stack([task.loss(w, batch) for w in seen])
    torch.testing.assert_close(traj.loss, expected)
    assert not torch.allclose(traj.loss, rollout(make("adam", torch.full((2,), 1e-2)), task, 3).loss)
    ends = run.trajectory(p, make("adam", torch.full((2,), 1e-2)), task, 3, every=3)  # as the tuning grids record
    torch.testing.assert_close(ends.loss, traj.loss[[0, -1]])
    r = Problem("r", "train", "regression", (4, 6, 2), 3, n=4)
    rt = r.sample([1])
    assert r.eval_batch(1) is None
    torch.testing.assert_close(run.trajectory(r, make("adam", torch.full((1,), 1e-2)), rt, 3).loss,
                               rollout(make("adam", torch.full((1,), 1e-2)), rt, 3).loss)


def test_averaged_parameters_are_swapped_in_and_restored():
    m = build(AdafacSpec("adafac"))
    raw = [q.detach().clone() for q in m.parameters()]
    avg = [torch.randn_like(q) for q in raw]
    with _averaged(m, avg):
        assert all(torch.equal(q, a) for q, a in zip(m.parameters(), avg))
    assert all(torch.equal(q, r) for q, r in zip(m.parameters(), raw))


def test_speedup_beats_and_iqm():
    adam = torch.tensor([[10.0, 10.0], [5.0, 5.0], [2.0, 2.0], [1.0, 1.0], [0.5, 0.5], [0.2, 0.2], [0.1, 0.1]])
    # horizon 2 (Adam ran 3× = 6 steps): final 2.0 is reached at step 2 (speedup 1), 0.5 at step 4 (2),
    # 0.01 never (censored at 3), NaN scores 0
    sp = scores.speedups(adam[:, [0, 1, 0, 1]], torch.tensor([2.0, 0.5, 0.01, float("nan")]), 2)
    torch.testing.assert_close(sp, torch.tensor([1.0, 2.0, 3.0, 0.0], dtype=torch.float64))
    b = scores.beats(torch.tensor([1.0, 3.0, float("nan")]), torch.tensor([2.0, 2.0, 2.0]))
    assert b.tolist() == [True, False, False]
    assert scores.iqm(np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 100.0])) == pytest.approx(3.5)
    point, lo, hi = scores.iqm_ci([np.arange(8.0), np.arange(8.0) + 1])
    assert lo <= point <= hi


def test_paired_twin_comparison():
    """`paired_rows`: a method 10× lower than its twin on every seed scores +1 with a resolved verdict; equal
    finals are unresolved; the sign flips with the roles."""
    from metatele.step import Trajectory
    T, seeds = 2, torch.tensor([1.0, 2.0, 4.0, 8.0])
    traj = lambda final: Trajectory(torch.stack([torch.ones(4), torch.ones(4), final]), torch.zeros(3, 4),  # noqa: E731
                                    torch.zeros(3))
    prob = Problem("p", "heldout", "regression", (2, 3, 1), T)
    runs = [run.ProblemRun(prob, {"a": traj(seeds / 10), "b": traj(seeds), "c": traj(seeds)}, {})]
    (row,) = scores.paired_rows(runs, "a", "b")
    assert row["mean_log10_ratio"] == pytest.approx(1.0) and row["verdict"] == "a" and row["frac_method_lower"] == 1.0
    assert scores.paired_rows(runs, "b", "a")[0]["verdict"] == "a"
    assert scores.paired_rows(runs, "b", "c")[0]["verdict"] == "unresolved"


@pytest.mark.slow
def test_bench_quick_runs(tmp_path):
    """The CLI end to end, on an untrained adafac checkpoint (= Adam at lr 1e-3): every output, every method, real
    TensorBoard event files."""
    ck = tmp_path / "ck" / "model.safetensors"
    checkpoints.save_model(ck, build(AdafacSpec("adafac-tele")))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out, logdir = tmp_path / "out", tmp_path / "runs"
    r = subprocess.run([sys.executable, "-m", "metatele", "bench", "--quick", "--learned", str(ck.parent),
                        "--out", str(out), "--logdir", str(logdir), "--no-progress"],
                       env=env, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader((out / "results.csv").open()))
    quick = problems.suite(quick=True)
    assert {(x["problem"], x["method"]) for x in rows} == {(p.name, m) for p in quick
                                                         for m in (*BASELINES, "adafac-tele")}
    assert all(x["geo_mean"] and float(x["geo_mean"]) > 0 for x in rows)
    assert (out / "loss_curves.png").stat().st_size > 0
    assert "IQM" in (out / "results.md").read_text() and (out / "summary.csv").exists()
    events = list(logdir.rglob("events.out.tfevents.*"))
    assert len(events) >= len(quick) * (len(BASELINES) + 1)
    bad = subprocess.run([sys.executable, "-m", "metatele", "bench", "--quick", "--learned", str(tmp_path / "none"),
                          "--out", str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


@pytest.mark.slow
@pytest.mark.parametrize("estimator", ["tbptt", "pes"])
def test_meta_train_runs_and_keeps_the_best_validated_checkpoint(tmp_path, estimator):
    """`metatele.bench.metatrain.meta_train` end to end, with either estimator: two batches, a validation check
    after each, a selected checkpoint that loads and whose recorded score is the best seen, and a log."""
    cfg = MetaTrainConfig(steps=20, min_steps=10, max_batches=2, eval_every=1, select_seeds=1, minutes=60.0,
                          estimator=estimator, particles=2)
    summary = meta_train(cfg, tmp_path, log=False)
    assert summary["batches"] == 2
    rows = list(csv.DictReader((tmp_path / "train_log.csv").open()))
    scores_seen = [summary["untrained_validation"]] + [float(r["validation"]) for r in rows]
    assert summary["best_validation"] == min(scores_seen)
    model = checkpoints.load_model(tmp_path / checkpoints.MODEL_FILE)
    assert model.metadata["validation_score"] == summary["best_validation"]
    assert model.metadata["batches"] == summary["best_batch"]


@pytest.mark.slow
def test_meta_train_warm_starts_from_a_checkpoint(tmp_path):
    """With `init`, meta-training starts the update rule from the checkpoint's exactly (no batch: the saved rule is
    the source, tensor for tensor), also for a teleporting twin (its update rule copied, its gate fresh), and all of
    a source whose spec is the run's (its gate too); a checkpoint of another rule (nominal lr) is refused with a
    ConfigError."""
    spec = AdafacSpec("adafac", nominal_lr=0.01, mix=0)
    source = build(spec)
    with torch.no_grad():
        for q in source.parameters():
            q.add_(0.01 * torch.randn_like(q))
    path = tmp_path / "src" / checkpoints.MODEL_FILE
    checkpoints.save_model(path, source)
    cfg = MetaTrainConfig(spec=spec, init=str(path), steps=20, min_steps=10, max_batches=0, select_seeds=1,
                          average=0.9)
    meta_train(cfg, tmp_path / "out", log=False)
    saved = checkpoints.load_model(tmp_path / "out" / checkpoints.MODEL_FILE)
    for k, v in source.state_dict().items():
        torch.testing.assert_close(saved.state_dict()[k], v, rtol=0, atol=0)
    cfg.spec = AdafacSpec("adafac-tele", nominal_lr=0.01, mix=0, group="diag")
    meta_train(cfg, tmp_path / "twin", log=False)
    twin = checkpoints.load_model(tmp_path / "twin" / checkpoints.MODEL_FILE)
    torch.manual_seed(cfg.seed)  # as meta_train builds its rule
    fresh = build(cfg.spec)
    for k, v in twin.state_dict().items():
        want = source.state_dict()[k] if k.startswith("net.") else fresh.state_dict()[k]
        torch.testing.assert_close(v, want, rtol=0, atol=0)
    with torch.no_grad():  # a teleporting source of the run's own spec: all of it, the gate included
        for q in fresh.parameters():
            q.add_(0.01 * torch.randn_like(q))
    checkpoints.save_model(tmp_path / "tele" / checkpoints.MODEL_FILE, fresh)
    cfg.init = str(tmp_path / "tele" / checkpoints.MODEL_FILE)
    meta_train(cfg, tmp_path / "continued", log=False)
    continued = checkpoints.load_model(tmp_path / "continued" / checkpoints.MODEL_FILE)
    assert any(k.startswith("gate.") for k in fresh.state_dict())
    for k, v in fresh.state_dict().items():
        torch.testing.assert_close(continued.state_dict()[k], v, rtol=0, atol=0)
    cfg.spec = AdafacSpec("adafac", mix=0)
    with pytest.raises(ConfigError, match="nominal_lr"):
        meta_train(cfg, tmp_path / "other", log=False)


@pytest.mark.slow
def test_time_to_quality_criterion_is_tuned_adams_iqm(tmp_path):
    """`iqm_vs_adam` is 0 for tuned Adam against itself and > 0 for a rule that ends lower on every run; meta_train
    reports the untrained rule as reached at batch 0 when it already beats the reference (and stops there with
    stop_at_adam), and as never reached against an unbeatable one."""
    val = problems.split("validation")
    adam = tuned_adam_finals(val, 1)
    assert iqm_vs_adam([a[None].expand(2, -1) for a in adam], adam) == 0.0
    assert iqm_vs_adam([(a / 10)[None].expand(2, -1) for a in adam], adam) == pytest.approx(1.0)
    high = [torch.full_like(a, 1e30) for a in adam]
    cfg = MetaTrainConfig(steps=20, min_steps=10, max_batches=1, eval_every=1, select_seeds=1, stop_at_adam=True)
    s = meta_train(cfg, tmp_path / "a", log=False, adam_finals=high)
    assert (s["reached_batch"], s["reached_minutes"], s["batches"]) == (0, 0.0, 0)
    cfg.stop_at_adam = False
    s = meta_train(cfg, tmp_path / "b", log=False, adam_finals=[torch.zeros_like(a) for a in adam])
    assert s["reached_batch"] is None and s["batches"] == 1


def test_validation_takes_the_horizon_it_is_given(tmp_path):
    """`validation_runs` (and so checkpoint selection and `tuned_adam_finals`) run each validation problem for
    `steps` when given, else for its own horizon; a bad val_steps is refused before anything is written."""
    p = problems.split("validation")[0]
    adam = make("adam", torch.full((2,), 1e-2))
    assert validation_runs(adam, [p], 2, 7)[0].shape == (8, 2)
    assert validation_runs(adam, [p], 2)[0].shape == (p.steps + 1, 2)
    assert tuned_adam_finals([p], 2, 7)[0].shape == (2,)
    with pytest.raises(ValueError, match="val_steps"):
        meta_train(MetaTrainConfig(val_steps=0, max_batches=0), tmp_path / "bad", log=False)
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_meta_train_resumes_exactly_from_its_training_state(tmp_path):
    """A run stopped after 2 batches and resumed to 4 equals one that ran 4 without stopping: the same selected
    checkpoint and training state, tensor for tensor (meta-parameters, Adam moments, Polyak average), and the same
    log but for the clock. A folder with a run is refused without `resume`; a resume with other settings is refused,
    naming them; a state whose progress metadata is tampered with is refused."""
    spec = AdafacSpec("adafac-tele", nominal_lr=0.01, mix=0, group="diag")
    cfg = MetaTrainConfig(spec=spec, steps=20, min_steps=10, max_batches=4, eval_every=2, select_seeds=1, average=0.5,
                          meta_lr=1e-3, gate_lr=1e-2)
    whole = meta_train(cfg, tmp_path / "whole", log=False)
    cfg.max_batches = 2
    meta_train(cfg, tmp_path / "parts", log=False)
    with pytest.raises(TrainStateExistsError):
        meta_train(cfg, tmp_path / "parts", log=False)
    cfg.max_batches = 4
    resumed = resumed_config(tmp_path / "parts", math.inf, 4)  # the settings come from the state itself
    assert resumed == replace(cfg, minutes=math.inf)
    parts = meta_train(resumed, tmp_path / "parts", log=False, resume=True)
    assert {k: v for k, v in whole.items() if "minutes" not in k} == {k: v for k, v in parts.items()
                                                                      if "minutes" not in k}
    for name in (checkpoints.MODEL_FILE, checkpoints.STATE_FILE):
        a, meta_a = checkpoints.read(tmp_path / "whole" / name)
        b, meta_b = checkpoints.read(tmp_path / "parts" / name)
        assert a.keys() == b.keys() and any(k.startswith("extra.average.") for k in a) == (name != "model.safetensors")
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    assert [{k: v for k, v in r.items() if k != "minutes"} for r in meta_a["rows"]] == \
        [{k: v for k, v in r.items() if k != "minutes"} for r in meta_b["rows"]]
    cfg.meta_lr = 2e-3
    with pytest.raises(TrainStateError, match="meta_lr"):
        meta_train(cfg, tmp_path / "parts", log=False, resume=True)
    cfg.meta_lr = 1e-3
    tensors, meta = checkpoints.read(tmp_path / "parts" / checkpoints.STATE_FILE)
    checkpoints.save(tmp_path / "parts" / checkpoints.STATE_FILE, tensors, {**meta, "best_batch": 99})
    with pytest.raises(TrainStateError, match="progress metadata is invalid"):
        meta_train(cfg, tmp_path / "parts", log=False, resume=True)
    with pytest.raises(TrainStateError, match="no training state"):
        meta_train(cfg, tmp_path / "empty", log=False, resume=True)
    for bad in ({"steps": "20"}, {"average": True}, {"spec": {"method": "lstm-update"}}, {"unknown": 1}):
        checkpoints.save(tmp_path / "parts" / checkpoints.STATE_FILE, tensors,
                         {**meta, "config": {**meta["config"], **bad}})
        with pytest.raises(TrainStateError, match="settings are invalid"):
            resumed_config(tmp_path / "parts", 1.0, 4)


def test_long_run_counts_count_the_never_diverges_criterion():
    """Runs (columns) that end above their start, rise above it on the way, or go non-finite are each counted;
    the geometric mean is of the final losses, NaN when a run is non-finite."""
    loss = torch.tensor([[1.0, 1.0, 1.0, 1.0],
                         [2.0, 0.5, 0.5, 0.5],
                         [0.1, 1.5, 0.01, 0.2]])
    c = scores.long_run_counts(loss)
    assert c == {"runs": 4, "nonfinite": 0, "final_above_initial": 1, "any_step_above_initial": 2,
                 "final_geo_mean": pytest.approx((0.1 * 1.5 * 0.01 * 0.2) ** 0.25)}
    loss[1, 3] = math.nan
    c = scores.long_run_counts(loss)
    assert (c["nonfinite"], c["any_step_above_initial"]) == (1, 3) and math.isnan(c["final_geo_mean"])
