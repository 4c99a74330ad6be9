"""Divergence handling, kill/interrupt safety and determinism of meta-training."""
from __future__ import annotations

import math
import random
import signal
import time

import pytest
import torch
from helpers import popen_cli, run_cli, wait_for_write

from metatele import checkpoints, config, tasks, train
from metatele.evaluation import compare, report, stats
from metatele.methods import baseline

TINY = dict(method="lstm-update-tele", hidden=8, trajectories=16, batch=8, steps=20, unroll=10, eval_every=1,
            eval_tasks=4)


def test_diverging_trajectories_are_skipped_and_no_nan_is_written(tmp_path):
    cfg = config.load(**{**TINY, "method": "lstm-update", "out_scale": 1e15})
    run = train.run(cfg, tmp_path / "o", progress=False)
    assert run.progress.skipped_windows >= 1
    model = checkpoints.load_model(tmp_path / "o")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert run.progress.history[-1]["n_nonfinite_step20"] > 0


def test_evaluation_counts_diverged_tasks_and_averages_finite_ones():
    task = tasks.sample(range(10**9, 10**9 + 8))
    res = compare.evaluate([compare.Entry(baseline("gd", "gd-huge", lr=0.05), {"lr": 0.05}),
                            compare.Entry(baseline("gd"), {"lr": 3e-4})], task, 30, progress=False)
    rows = {(r["method"], r["step"]): r for r in report.rows(res)}
    assert rows["gd-huge", 30]["n_diverged"] > 0 and rows["gd-huge", 30]["n_nonfinite"] > 0
    assert rows["gd", 30]["n_diverged"] == 0 and math.isfinite(rows["gd", 30]["loss_mean"])
    loss = torch.tensor([1.0, 3.0, float("inf"), float("nan")])
    s = stats.summarize(loss)
    assert s["n_nonfinite"] == 2 and s["loss_mean"] == 2.0 and s["n_tasks"] == 4


def test_same_config_and_seed_give_bit_identical_checkpoints(tmp_path):
    cfg = config.load(**TINY)
    train.run(cfg, tmp_path / "a", progress=False)
    train.run(cfg, tmp_path / "b", progress=False)
    for f in (checkpoints.MODEL_FILE, checkpoints.STATE_FILE):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()


LONG = ["--set", "hidden=8", "--set", "trajectories=4000", "--set", "batch=4", "--set", "steps=10",
        "--set", "eval_every=0", "--set", "ckpt_every=1", "--no-progress"]


@pytest.mark.slow
def test_sigkill_always_leaves_a_loadable_checkpoint_and_resume_continues(tmp_path):
    out = tmp_path / "ck"
    rng = random.Random(0)
    seen = []
    for _ in range(10):
        args = ["train", "--out", str(out), "--logdir", str(tmp_path / "runs"), *LONG]
        state = out / checkpoints.STATE_FILE
        before = state.stat().st_mtime_ns if state.exists() else 0
        p = popen_cli(*(args + (["--resume"] if state.exists() else [])), cwd=tmp_path)
        assert wait_for_write(state, before)  # this process has started and saved; now kill at random
        time.sleep(rng.uniform(0.0, 1.0))
        p.kill()
        p.wait()
        if (out / checkpoints.STATE_FILE).exists():
            run = train.restore(out / checkpoints.STATE_FILE)  # must always load
            checkpoints.load_model(out)
            seen.append(run.progress.batches_done)
    assert len(seen) == 10 and seen == sorted(seen) and seen[-1] > seen[0]  # progress carried across kills
    r = run_cli("train", "--out", str(out), "--logdir", str(tmp_path / "runs"), "--resume", *LONG[:-1],
                "--set", "trajectories=" + str(4 * (seen[-1] + 3)), "--no-progress", cwd=tmp_path)
    assert r.returncode == 2 and "differs" in r.stderr  # resume refuses a changed config
    before = (out / checkpoints.STATE_FILE).stat().st_mtime_ns
    p = popen_cli("train", "--out", str(out), "--logdir", str(tmp_path / "runs"), "--resume", *LONG, cwd=tmp_path)
    assert wait_for_write(out / checkpoints.STATE_FILE, before)
    p.send_signal(signal.SIGINT)
    stdout, _ = p.communicate(timeout=60)
    assert p.returncode == 130 and "interrupted; saved" in stdout
    assert train.restore(out / checkpoints.STATE_FILE).progress.batches_done > seen[-1]


def test_sigint_stops_cleanly_after_saving(tmp_path):
    out = tmp_path / "ck"
    p = popen_cli("train", "--out", str(out), "--logdir", str(tmp_path / "runs"), *LONG, cwd=tmp_path)
    assert wait_for_write(out / checkpoints.STATE_FILE)  # started and training
    p.send_signal(signal.SIGINT)
    stdout, stderr = p.communicate(timeout=60)
    assert p.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted; saved" in stdout
    run = train.restore(out / checkpoints.STATE_FILE)
    assert 0 < run.progress.batches_done < 1000


def test_report_horizons():
    assert stats.report_steps(1000) == [1, 10, 30, 100, 300, 1000]
    assert stats.report_steps(250) == [1, 10, 30, 100, 250]
    assert stats.report_steps(3000)[-2:] == [1000, 3000] and stats.report_steps(1) == [1]


def test_divergence_definitions_on_synthetic_curves():
    t = torch.arange(101, dtype=torch.float64)[:, None]
    converging = 100 * torch.exp(-t / 10)
    climbs_back = torch.where(t < 50, 100 * torch.exp(-t / 5), 0.01 * torch.exp((t - 50) / 5))  # ends above L0
    blows_up = torch.where(t < 50, 100 * torch.exp(-t / 5), 0.01 * torch.exp((t - 50) / 10))  # ends > 10× best, < L0
    nan_end = converging.clone()
    nan_end[-1] = float("nan")
    d = stats.divergence(torch.cat([converging, climbs_back, blows_up, nan_end], dim=1))
    assert d == {"n_diverged": 2.0, "n_blowup": 3.0}


def test_intervals_are_never_negative_for_losses():
    loss = torch.tensor([1e-3, 5e-3, 2.0, 1e4, 3.0, 0.5])  # a normal interval on this spread goes negative
    s = stats.summarize(loss)
    assert 0 < s["geo_ci95_low"] < s["geo_mean"] < s["geo_ci95_high"]
    assert 0 < s["loss_ci95_low"] < s["loss_mean"] < s["loss_ci95_high"]
    assert s["loss_mean"] - 1.96 * float(loss.double().std()) / len(loss) ** 0.5 < 0
