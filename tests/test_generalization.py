"""Sharpness, orbit curvature, teleport to a target, the correlation statistics and the generalization study."""
from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metatele import cli
from metatele.evaluation.stats import correlation, correlation_ci, t_interval
from metatele.nn import inspect_mlp
from metatele.studies import generalization as G
from metatele.tasks.mlp import LeakyReLU
from metatele.teleport.action import group_action, teleport
from metatele.teleport.measures import curvature, lie_directions, orbit_derivatives, random_directions, sharpness
from metatele.teleport.targets import DRIFT_TOL, OBJECTIVES, teleport_to_target_

ACT = LeakyReLU(0.1)


pytestmark = pytest.mark.usefixtures("one_thread")


def mlp(widths, bias, seed=0):
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b, bias=bias), nn.LeakyReLU(0.1)]
    return nn.Sequential(*layers[:-1]).double()


@pytest.mark.parametrize("widths,n,bias,lsq", [
    ((12, 6, 5, 3), 5, False, False),        # exact action, two hidden layers
    ((12, 6, 5, 3), 6, True, False),         # exact with biases: n = width + 1 at the second layer
    ((12, 6, 5, 4, 3), 5, True, False),      # three hidden layers
    ((12, 6, 5, 3), 20, True, True),         # more samples than widths: the least-squares extension
])
def test_orbit_derivatives_match_finite_differences_of_the_orbit(widths, n, bias, lsq):
    gen = torch.Generator().manual_seed(1)
    W = [torch.randn(1, b, a + int(bias), generator=gen, dtype=torch.float64) / a ** 0.5
         for a, b in zip(widths[:-1], widths[1:])]
    X = torch.randn(1, widths[0], n, generator=gen, dtype=torch.float64)
    M = lie_directions(widths[1:-1], 3, seed=2, dist="normal")
    d1, d2 = orbit_derivatives(W, X, M, act=ACT, bias=bias)
    h = 1e-4
    # no pre-activation of the orbit may cross LeakyReLU's kink within ±h, or the difference quotient is wrong
    a, Hin = X, X
    for m, Mm in enumerate(M):
        Hin = torch.cat([a, torch.ones(1, 1, n, dtype=a.dtype)], 1) if bias else a
        a = ACT(W[m] @ Hin)
        assert bool((a.abs() > 2 * h * (Mm @ a).abs()).all())
    for b in range(3):
        def orbit(t: float) -> list[torch.Tensor]:
            g = [torch.linalg.matrix_exp(t * Mm[b:b + 1]) for Mm in M]
            return group_action(W, X, g, act=ACT, bias=bias, nearest=True, least_squares=lsq)

        p, z, q = orbit(h), orbit(0.0), orbit(-h)
        flat = lambda ts: torch.cat([t.flatten() for t in ts])  # noqa: E731
        assert float((flat(z) - flat(W)).norm() / flat(W).norm()) < 1e-14  # γ(0) = w: the orbit passes through w
        fd1 = (flat(p) - flat(q)) / (2 * h)
        fd2 = (flat(p) - 2 * flat(z) + flat(q)) / h ** 2
        assert float((flat([g[b] for g in d1]) - fd1).norm() / fd1.norm()) < 1e-6
        assert float((flat([g[b] for g in d2]) - fd2).norm() / fd2.norm()) < 1e-6


def test_nearest_action_is_identity_at_g_eq_i_and_keeps_the_loss():
    m = mlp((30, 6, 5, 3), bias=False)
    W = inspect_mlp(m).get_weights()
    X = torch.randn(1, 30, 4, dtype=torch.float64)
    eye = [torch.eye(k, dtype=torch.float64)[None] for k in (6, 5)]
    same = group_action(W, X, eye, act=ACT, nearest=True)
    assert max(float((a - b).abs().max()) for a, b in zip(same, W)) < 1e-12
    projected = group_action(W, X, eye, act=ACT)  # the minimum-norm formula rewrites W1 when n < d
    assert float((projected[0] - W[0]).norm() / W[0].norm()) > 0.5
    T = [0.3 * torch.randn(1, k, k, dtype=torch.float64) for k in (6, 5)]
    new = teleport(W, X, T, None, act=ACT, nearest=True)
    out = lambda ws: (ws[2][0] @ ACT(ws[1][0] @ ACT(ws[0][0] @ X[0])))  # noqa: E731
    assert float((out(new) - out(W)).abs().max() / out(W).abs().max()) < 1e-12
    # it composes, g2·(g1·W) = (g2 g1)·W, when the hidden layers' inputs are square (n = 6 = k1), not otherwise
    for n, composes in ((6, True), (4, False)):
        m = mlp((30, 6, 6, 3), bias=False)
        W = inspect_mlp(m).get_weights()
        X = torch.randn(1, 30, n, dtype=torch.float64)
        g1 = [torch.eye(6, dtype=torch.float64) + 0.3 * torch.randn(1, 6, 6, dtype=torch.float64) for _ in range(2)]
        g2 = [torch.eye(6, dtype=torch.float64) + 0.2 * torch.randn(1, 6, 6, dtype=torch.float64) for _ in range(2)]
        two = group_action(group_action(W, X, g1, act=ACT, nearest=True), X, g2, act=ACT, nearest=True)
        once = group_action(W, X, [b @ a for a, b in zip(g1, g2)], act=ACT, nearest=True)
        gap = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(two, once))
        assert (gap < 1e-9) if composes else (gap > 1e-3), (n, gap)


def test_curvature_is_deterministic_given_a_seed():
    m = mlp((10, 6, 5, 3), bias=True)
    X = torch.randn(40, 10, dtype=torch.float64)
    a, b, c = curvature(m, X, 8, seed=3), curvature(m, X, 8, seed=3), curvature(m, X, 8, seed=4)
    assert a.item() == b.item() and a.item() != c.item() and math.isfinite(a.item()) and a.item() > 0


def test_sharpness_is_zero_at_radius_zero_and_grows_as_the_radius_squared_on_least_squares():
    torch.manual_seed(0)
    X, y = torch.randn(50, 5, dtype=torch.float64), torch.randn(50, 1, dtype=torch.float64)
    model = nn.Sequential(nn.Linear(5, 1)).double()
    Xa = torch.cat([X, torch.ones(50, 1, dtype=torch.float64)], 1)
    sol = torch.linalg.lstsq(Xa, y).solution  # the minimum of the convex loss
    with torch.no_grad():
        model[0].weight.copy_(sol[:5].T)
        model[0].bias.copy_(sol[5])
    radii = [0.0, 0.05, 0.1, 0.2, 0.4]
    phi = [sharpness(model, F.mse_loss, [(X, y)], [t], n_dirs=6, seed=7).item() for t in radii]
    assert abs(phi[0]) <= 1e-14  # L(w + 0·d) − L(w): rounding only (a vectorized sum may depend on alignment)
    assert all(b > a for a, b in zip(phi, phi[1:]))
    # at the minimum L(w + t d) − L(w) = t² dᵀ(X̃ᵀX̃/n)d exactly; d are the same six directions every time
    d = random_directions(dict(model.named_parameters()), 6, 7)
    D = torch.cat([d["0.weight"].reshape(6, 5), d["0.bias"].reshape(6, 1)], 1)
    quad = float(((D @ Xa.T) ** 2).sum(1).mean() / 50)
    for t, p in zip(radii[1:], phi[1:]):
        assert p == pytest.approx(t * t * quad, rel=1e-8)
    assert sharpness(model, F.mse_loss, [(X, y)], radii, 6, seed=7).item() == pytest.approx(np.mean(phi), rel=1e-12)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("group", ["gl", "diag"])
def test_teleport_to_target_moves_the_measure_the_asked_way_and_keeps_the_batch_loss(bias, group):
    torch.manual_seed(1)
    widths = (20, 8, 6, 4)
    X, y = torch.randn(60, 20, dtype=torch.float64), torch.randint(0, 4, (60,))
    Xt, yt = X[:5], y[:5]
    for objective, (measure, up) in OBJECTIVES.items():
        m = mlp(widths, bias, seed=2)
        before_out = m(Xt).detach()
        res = teleport_to_target_(m, Xt, yt, objective, (X, y), steps=4, step=0.05, group=group, n_dirs=4)
        assert res.drift <= DRIFT_TOL
        before, after = res.objective_before, res.objective_after
        assert (after > before) if up else (after < before), (objective, res)
        with torch.no_grad():
            assert float((m(Xt) - before_out).abs().max() / before_out.abs().max()) < 1e-9  # the model written back
            moved = float((m(X) - mlp(widths, bias, seed=2)(X)).abs().max())
        # rescaling keeps the function everywhere; the GL action only on the teleport batch
        assert moved < 1e-9 if group == "diag" else moved > 1e-4


def test_correlation_ci_on_synthetic_data_with_a_known_correlation():
    rng = np.random.default_rng(0)
    rho = 0.6
    x = rng.normal(size=2000)
    y = rho * x + math.sqrt(1 - rho ** 2) * rng.normal(size=2000)
    p = correlation_ci(x, y, "pearson", n_boot=1000)
    s = correlation_ci(x, y, "spearman", n_boot=1000)
    assert p["lo"] < rho < p["hi"] and p["hi"] - p["lo"] < 0.08
    rho_s = 6 / math.pi * math.asin(rho / 2)  # Spearman's ρ of a bivariate normal
    assert s["lo"] < rho_s < s["hi"]
    assert correlation(x, np.exp(x), "spearman") == pytest.approx(1.0)
    assert correlation(x, np.exp(x), "pearson") < 0.9
    # the 95% percentile-bootstrap CI covers the true ρ about 95% of the time (n = 40 pairs per data set)
    hits = 0
    for k in range(150):
        xs = rng.normal(size=40)
        ys = rho * xs + math.sqrt(1 - rho ** 2) * rng.normal(size=40)
        c = correlation_ci(xs, ys, "pearson", n_boot=1000, seed=k)
        hits += c["lo"] < rho < c["hi"]
    assert 0.87 <= hits / 150 <= 0.99, hits


def test_t_interval_covers_the_mean_at_its_level():
    rng = np.random.default_rng(1)
    x = rng.normal(loc=2.0, size=(5, 4000))  # 4000 experiments of 5 seeds each
    m, lo, hi = t_interval(x)
    assert 0.93 <= float(((lo < 2.0) & (2.0 < hi)).mean()) <= 0.97


def test_the_study_writes_finite_tables_figures_and_tensorboard(tmp_path):
    plan = G.Plan(epochs=2, runs=3, measure_batches=1, sharp_dirs=2, paper_dirs=1, curv_dirs=2, teleport_seeds=2,
                  teleport_epoch=1, teleport_steps=1, teleport_dirs=2, n_boot=200)
    assert G.main(["digits"], plan, tmp_path / "out", tmp_path / "runs", parts=("correlation", "teleport")) == 0
    d = tmp_path / "out" / "digits"
    for f in ("runs.csv", "correlation.csv", "correlation.md", "scatter.png", "teleports.csv", "teleport.csv",
              "teleport.md", "teleport.png", "results.json"):
        assert (d / f).stat().st_size > 0, f
    rows = list(csv.DictReader((d / "runs.csv").open()))
    assert len(rows) == 6 and {r["set"] for r in rows} == {"A", "B"}
    assert all(math.isfinite(float(r[k])) for r in rows for k in ("phi", "psi", "psi_exact", "val_loss"))
    for f in ("runs.csv", "correlation.csv", "teleport.csv", "teleports.csv", "results.json"):
        assert "nan" not in (d / f).read_text().lower(), f
    tele = list(csv.DictReader((d / "teleport.csv").open()))
    assert len(tele) == len(G.GROUPS) * (len(G.VARIANTS) - 1)
    diag = [r for r in tele if r["group"] == "diag"]
    assert all(abs(float(r["val_loss_jump"])) < 1e-5 for r in diag)  # rescaling keeps the function
    assert len(list((tmp_path / "runs" / "digits").iterdir())) == 1 + len(tele)


@pytest.mark.parametrize("argv,needle", [
    (["generalization", "--quick", "--epochs", "3", "--teleport-epoch", "3"], "teleport epoch"),
    (["generalization", "--quick", "--runs", "0"], "expected an integer in [1, 10000000]"),
    (["generalization", "--quick", "--runs", "2"], "at least 3 runs"),
    (["generalization", "--quick", "--teleport-seeds", "1"], "at least 2 teleport seeds"),
    (["generalization", "--quick", "--device", "cuda"], "CUDA is not available"),
    (["generalization", "--quick", "--dataset", "fashion-mnist"], "not installed"),
])
def test_generalization_cli_errors_are_one_line(capsys, argv, needle):
    if needle == "CUDA is not available" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    if needle == "not installed" and "fashion-mnist" in G.default_datasets():
        pytest.skip("Fashion-MNIST is installed here")
    with pytest.raises(SystemExit) as ei:
        raise SystemExit(cli.main(argv))
    assert ei.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and needle in err, err
