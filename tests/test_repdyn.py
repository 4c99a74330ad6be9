"""Two-point effective theory: exact properties of the ODE, the probe and the fitter."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from metatele import cli, repdyn, step, tasks
from metatele.methods import baseline
from metatele.repdyn import paper as P
from metatele.tasks.mlp import activations

ETA_H, ETA_Y, DX, DS = 0.02, 0.5, 1.0, 0.5


def test_conserved_quantity_along_stiff_integration():
    t = np.linspace(0, 5000, 2001)
    out = repdyn.integrate([0.3, 0.05, -0.05], t, ETA_H, ETA_Y, DX, DS, rtol=1e-11, atol=1e-14)
    C = repdyn.conserved(out[:, 0], out[:, 1], ETA_H, ETA_Y, DX)
    assert np.abs(C - C[0]).max() <= 1e-6 * abs(C[0])
    assert abs(out[-1, 2]) < 1e-8  # reached the fixed point w = 0


@pytest.mark.parametrize("state0", [[0.3, 0.05, -0.05], [2.0, 1.5, 0.9], [0.01, 0.002, 0.001]])
def test_fixed_point_formula_matches_long_integration(state0):
    out = repdyn.integrate(state0, np.array([0.0, 2e5]), ETA_H, ETA_Y, DX, DS, rtol=1e-11, atol=1e-14)
    fp = repdyn.fixed_point(state0[0], state0[1], ETA_H, ETA_Y, DX, DS)
    assert out[-1, 0] == pytest.approx(fp.H_inf, rel=1e-5)
    assert out[-1, 1] == pytest.approx(DS, rel=1e-5)


def test_step_budget_is_deterministic_and_no_budget_finishes():
    """The solver's budget is counted in steps, not seconds: a busy machine gives the same rows."""
    t = np.concatenate([[0.0], np.geomspace(1, 2e5, 49)])
    full = repdyn.integrate([0.3, 0.05, -0.05], t, ETA_H, ETA_Y, DX, DS, rtol=1e-11, atol=1e-14)
    assert np.isfinite(full).all()
    cut = [repdyn.integrate([0.3, 0.05, -0.05], t, ETA_H, ETA_Y, DX, DS, rtol=1e-11, atol=1e-14, max_steps=100)
           for _ in range(2)]
    np.testing.assert_array_equal(cut[0], cut[1])
    done = np.isfinite(cut[0]).all(1)
    assert 2 <= done.sum() < len(t) and not done[done.argmin():].any()  # a finite prefix, then NaN rows
    np.testing.assert_array_equal(cut[0][done], full[done])


def test_rich_and_lazy_limits():
    rich = repdyn.fixed_point(1e-6, 1e-10, ETA_H, ETA_Y, DX, DS)  # small init: H∞ ≈ A_low
    assert abs(rich.A_high) < 1e-3 * rich.A_low and rich.H_inf == pytest.approx(rich.A_low, rel=1e-3)
    lazy = repdyn.fixed_point(100.0, 50.0, ETA_H, ETA_Y, DX, DS)  # large init: H∞ ≈ H0
    assert lazy.A_high > 100 * lazy.A_low and lazy.H_inf == pytest.approx(100.0, rel=1e-2)


def test_jacobian_matches_finite_differences():
    s = np.array([0.3, 0.2, -0.05])
    J = repdyn.jacobian(s, ETA_H, ETA_Y, DX, DS)
    for k in range(3):
        e = np.zeros(3)
        e[k] = 1e-6
        fd = (repdyn.rhs(s + e, ETA_H, ETA_Y, DX, DS) - repdyn.rhs(s - e, ETA_H, ETA_Y, DX, DS)) / 2e-6
        assert np.allclose(J[:, k], fd, rtol=1e-6, atol=1e-9)


def test_analytic_loss_matches_two_point_mse():
    y = torch.tensor([[0.1, -0.2], [0.5, 0.3]])
    ys = torch.tensor([[0.0, 0.1], [0.6, 0.8]])
    dy, dys = y[1] - y[0], ys[1] - ys[0]
    w, Yd, Ds = float(dy @ (dy - dys)), float(dy @ dy), float(dys @ dys)
    gap = float(((y.mean(0) - ys.mean(0)) ** 2).sum())
    direct = float(0.5 * ((y - ys) ** 2).sum(1).mean())
    assert repdyn.analytic_loss(np.array([0.0]), np.array([w]), np.array([Yd]), Ds, gap, 1.0)[0] == pytest.approx(direct)


@pytest.mark.parametrize("search", ["LSODA", pytest.param("Radau", marks=pytest.mark.slow)])
def test_fitter_recovers_known_rates(search):
    t = np.arange(3000.0)
    data = repdyn.integrate([0.001, 1e-4, 1e-4], t, 0.0018, 0.062, DX, DS)
    f = repdyn.fit(data, DX, DS, search=search)
    assert f.eta_h == pytest.approx(0.0018, rel=1e-3) and f.eta_y == pytest.approx(0.062, rel=1e-3)
    assert min(f.r2_H, f.r2_Y, f.r2_w) > 0.9999


def test_probe_on_generic_sequential_matches_manual():
    net = nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1))
    probe = repdyn.Probe(P.Y_PAIR[1] - P.Y_PAIR[0])
    with torch.no_grad():
        h, y = repdyn.sequential_split(net, 3)(P.X_PAIR)
        probe.record(h, y)
        H, Yd, w = probe.series()[0, 0]
        dh = net[:4](P.X_PAIR)
        dh = dh[1] - dh[0]
        dy = net(P.X_PAIR)
        dy = dy[1] - dy[0]
    assert H == pytest.approx(float(dh @ dh)) and Yd == pytest.approx(float(dy @ dy))
    assert w == pytest.approx(float(dy @ (dy - (P.Y_PAIR[1] - P.Y_PAIR[0]))), rel=1e-6)


def test_probe_on_metatele_tasks_records_one_series_per_task():
    task = tasks.sample(range(10**9, 10**9 + 3))
    probe, cb = repdyn.task_probe(task, layer=1)
    step.rollout(baseline("gd"), task, 5, cb)
    s = probe.series()
    assert s.shape == (3, 6, 3)
    h = activations(task.weights, task.X, task.activation)[0]
    dh = h[0, :, 1] - h[0, :, 0]
    assert s[0, 0, 0] == pytest.approx(float(dh @ dh), rel=1e-5)


def test_resnet_variant_adds_the_activation_from_two_layers_back():
    net = P.PaperNet(P.NetSpec(kind="resnet", depth=4, width=6, gain=0.5))
    x = torch.randn(2, 1)
    y, hs = net(x)
    act = nn.LeakyReLU()
    h1 = act(net.hidden[0](x))
    h2 = act(net.hidden[1](h1))
    h3 = act(net.hidden[2](h2)) + h1
    h4 = act(net.hidden[3](h3)) + h2
    for got, want in zip(hs, (h1, h2, h3, h4)):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(y, net.readout(h4))


def test_full_plan_profiles_default_and_resnet_by_layer_and_trains_each_network_once():
    jobs = P.paper_jobs(P.FULL)
    specs = [spec for _, spec, _, _ in jobs]
    assert len(specs) == len(set(specs)) == P.FULL.seeds * (len(P.FULL.variants) + len(P.FULL.gains) - 1)
    for group, spec, layers, main in jobs:
        assert main == P.FULL.main_layer and main in layers
        profiled = group == "variant" and spec.kind in ("leaky_relu", "resnet")
        assert layers == (list(P.FULL.layers) if profiled else [main]), (group, spec)


def test_aggregate_takes_median_and_minimum_over_seeds():
    rows = [{"group": "variant", "model": "m", "layer": 11, "r2_H": r, "r2_Y": 1.0, "r2_w": r, "eta_h": e,
             "eta_y": 1.0} for r, e in ((0.9, 1.0), (0.5, 2.0), (0.7, 3.0))]
    (s,) = P.aggregate_seeds(rows)
    assert s["n"] == 3 and s["r2_w"] == pytest.approx(0.7) and s["r2_w_min"] == pytest.approx(0.5)
    assert s["eta_h"] == pytest.approx(2.0)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_ode_fits_a_mid_layer_of_a_deep_network_better_than_the_first(seed):
    """The paper's claims at reduced width (128) and steps (1500): at hidden layer 11 the two-constant
    ODE explains H and Yd and predicts the final representational distance; at layer 1 it fits worse."""
    series = P.train_two_point(P.NetSpec(width=128, steps=1500, seed=seed), [1, 11])
    first, mid = (repdyn.fit(series[k], P.DX, P.DS) for k in (1, 11))
    assert min(mid.r2_H, mid.r2_Y) >= 0.9, (mid.r2_H, mid.r2_Y)
    assert mid.r2_H > first.r2_H and mid.r2_Y > first.r2_Y and mid.r2_w > first.r2_w
    d = series[11]
    fp = repdyn.fixed_point(d[0, 0], d[0, 1], mid.eta_h, mid.eta_y, P.DX, P.DS)
    assert fp.H_inf == pytest.approx(d[-1, 0], rel=0.3)


@pytest.mark.slow
def test_quick_cli_writes_json_table_and_figures(tmp_path):
    out = tmp_path / "rd"
    assert cli.main(["repdyn", "--quick", "--out", str(out), "--json", str(tmp_path / "f.json"), "--no-progress"]) == 0
    fits = json.loads((tmp_path / "f.json").read_text())["fits"]
    keys = {"model", "layer", "eta_h", "eta_y", "r2_H", "r2_Y", "r2_w"}
    assert fits and all(keys <= set(f) for f in fits)
    for png in ("fits_by_architecture.png", "gain_sweep.png", "r2_by_layer.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert "| variant |" in (out / "repdyn.md").read_text()
