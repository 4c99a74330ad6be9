"""The statistics of evaluation: diverged and non-finite tasks are counted, never averaged; report horizons;
divergence definitions; confidence intervals that hold what they claim."""
from __future__ import annotations

import math

import numpy as np
import torch

from metatele import tasks
from metatele.evaluation import compare, report, stats
from metatele.methods import baseline


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


def test_intervals_are_never_negative_for_losses_and_match_their_definitions():
    """On a spread where a normal interval for the mean would go negative: the geometric interval is the
    t-interval of log10 loss (t(0.975, 5) = 2.5706), and the bootstrap interval of the mean lies inside the
    range of the data, so both stay positive."""
    loss = torch.tensor([1e-3, 5e-3, 2.0, 1e4, 3.0, 0.5])
    s = stats.summarize(loss)
    logs = np.log10(loss.double().numpy())
    half = 2.570581836 * logs.std(ddof=1) / math.sqrt(len(logs))
    assert math.isclose(s["geo_ci95_low"], 10 ** (logs.mean() - half), rel_tol=1e-8)
    assert math.isclose(s["geo_ci95_high"], 10 ** (logs.mean() + half), rel_tol=1e-8)
    assert float(loss.min()) <= s["loss_ci95_low"] < s["loss_mean"] < s["loss_ci95_high"] <= float(loss.max())


def test_geometric_interval_covers_the_true_geometric_mean_95_percent_of_the_time():
    """400 draws of 6 log-normal losses (fixed seed): the 95% interval covers 10^μ in 91–99% of them (the
    binomial spread at 400 draws is ±2.2% at two standard errors)."""
    rng = np.random.default_rng(0)
    covered = 0
    for _ in range(400):
        loss = torch.tensor(10 ** rng.normal(-1.0, 1.5, size=6))
        s = stats.summarize(loss)
        covered += s["geo_ci95_low"] <= 10**-1.0 <= s["geo_ci95_high"]
    assert 0.91 <= covered / 400 <= 0.99, covered


def test_summarize_steps_is_summarize_at_every_step():
    """The batched per-step statistics (TensorBoard's curves) are `summarize`'s to the bit, also at steps with
    diverged tasks and at a step where every task diverged."""
    g = torch.Generator().manual_seed(0)
    for B in (1, 2, 7, 64):
        loss = torch.rand(40, B, generator=g) * 10 ** (8 * torch.rand(40, B, generator=g) - 4)
        loss[5, 0], loss[9, -1], loss[12] = math.inf, math.nan, math.nan
        got = stats.summarize_steps(loss)
        for s in range(40):
            want = stats.summarize(loss[s], intervals=False)
            for k in stats.STEP_KEYS:
                assert got[k][s] == want[k] or (math.isnan(got[k][s]) and math.isnan(want[k])), (B, s, k)
