"""Reproduce the two-point theory's claims (van Rossem & Saxe 2024) and apply the probe to metatele's
optimizers. Used by `metatele repdyn`; shapes and formulas are in metatele.repdyn."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from metatele import repdyn

DX, DS = 1.0, 0.5
X_PAIR = torch.tensor([[-1.0], [-1.0 + math.sqrt(DX)]])
Y_PAIR = torch.tensor([[0.6], [0.6 + math.sqrt(DS)]])
ACTS = {"leaky_relu": nn.LeakyReLU, "relu": nn.ReLU, "tanh": nn.Tanh}


class Residual(nn.Module):
    """h → h + β σ(W h + b), with β = 1/√depth so that a deep stack keeps O(1) activations at init
    (without it the 20-block net starts at ‖Δy‖² ≈ 8·10⁴ and diverges at lr 0.01)."""

    def __init__(self, width: int, act: type[nn.Module], beta: float) -> None:
        super().__init__()
        self.linear, self.act, self.beta = nn.Linear(width, width), act(), beta

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.beta * self.act(self.linear(h))


@dataclass(frozen=True)
class NetSpec:
    kind: str = "leaky_relu"   # leaky_relu | relu | tanh | resnet (leaky-ReLU residual blocks)
    depth: int = 20
    width: int = 500
    gain: float = 1.0
    lr: float = 0.01
    steps: int = 3000
    seed: int = 0


def make_net(s: NetSpec) -> nn.Sequential:
    """depth hidden layers (one module each, so hidden layer k is the output of module k−1), then a
    linear output. Xavier-normal weights with gain s.gain, zero biases."""
    torch.manual_seed(s.seed)
    act = ACTS.get(s.kind, nn.LeakyReLU)
    layers: list[nn.Module] = [nn.Sequential(nn.Linear(1, s.width), act())]
    for _ in range(s.depth - 1):
        layers.append(Residual(s.width, act, s.depth ** -0.5) if s.kind == "resnet" else nn.Sequential(nn.Linear(s.width, s.width), act()))
    layers.append(nn.Linear(s.width, 1))
    net = nn.Sequential(*layers)
    for m in net.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight, gain=s.gain)
            nn.init.zeros_(m.bias)
    return net


def train_two_point(s: NetSpec, layers: list[int]) -> dict[int, np.ndarray]:
    """Full-batch GD on the two points; (T, 3) series of (H, Yd, w) per probed hidden layer, recorded
    before each update. Runs single-threaded: with a batch of two points, intra-op threads only add
    synchronization overhead (and stall badly when cores are shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_two_point(s, layers)
    finally:
        torch.set_num_threads(threads)


def _train_two_point(s: NetSpec, layers: list[int]) -> dict[int, np.ndarray]:
    net = make_net(s)
    opt = torch.optim.SGD(net.parameters(), lr=s.lr)
    probes = {k: repdyn.Probe(Y_PAIR[1] - Y_PAIR[0]) for k in layers}
    feats: dict[int, torch.Tensor] = {}
    hooks = [net[k - 1].register_forward_hook(lambda mod, inp, out, k=k: feats.__setitem__(k, out)) for k in layers]
    try:
        for _ in range(s.steps):
            y = net(X_PAIR)
            for k, p in probes.items():
                p.record(feats[k], y)
            loss = 0.5 * (y - Y_PAIR).pow(2).sum(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        for h in hooks:
            h.remove()
    return {k: p.series()[0] for k, p in probes.items()}


@dataclass
class Plan:
    base: NetSpec
    variants: tuple[str, ...]
    gains: tuple[float, ...]
    layers: tuple[int, ...]
    main_layer: int


FULL = Plan(NetSpec(), ("leaky_relu", "relu", "tanh", "resnet"), (0.9, 1.0, 1.1, 1.2, 1.3, 1.4),
            (1, 2, 3, 5, 8, 11, 14, 17, 19), 11)
# --quick: same depth and layer, width 500 → 32 and 3000 → 800 steps, fewer gains and layers, and no
# optimizer probe (CPU time).
QUICK = Plan(NetSpec(width=32, steps=800), FULL.variants, (1.0, 1.2, 1.4), (1, 3, 11, 17), 11)


def fit_row(model: str, layer: int, data: np.ndarray, **extra: Any) -> dict[str, Any]:
    f = repdyn.fit(data, DX, DS)
    fp = repdyn.fixed_point(data[0, 0], data[0, 1], f.eta_h, f.eta_y, DX, DS)
    return {"model": model, "layer": layer, "eta_h": f.eta_h, "eta_y": f.eta_y, "r2_H": f.r2_H, "r2_Y": f.r2_Y,
            "r2_w": f.r2_w, "H0": float(data[0, 0]), "H_end": float(data[-1, 0]), "A_low": fp.A_low,
            "A_high": fp.A_high, "H_inf": fp.H_inf, **extra, "_data": data, "_pred": f.pred}


def run_paper(plan: Plan, progress: bool = True) -> list[dict[str, Any]]:
    """(a) architectures at the main layer, (b) init-gain sweep, (c) fit quality by layer."""
    from tqdm import tqdm

    jobs = [("variant", k) for k in plan.variants] + [("gain", g) for g in plan.gains if g != plan.base.gain]
    rows: list[dict[str, Any]] = []
    for what, val in tqdm(jobs, desc="repdyn networks", disable=not progress):
        spec = NetSpec(**{**plan.base.__dict__, **({"kind": val} if what == "variant" else {"gain": val})})
        layers = list(plan.layers) if (what == "variant" and val == "leaky_relu") else [plan.main_layer]
        series = train_two_point(spec, layers)
        for k, data in series.items():
            name = f"{spec.kind} gain={spec.gain:g} {spec.depth}x{spec.width}"
            if not np.isfinite(data).all():  # diverged: say so instead of fitting
                print(f"repdyn: {name} diverged at lr {spec.lr}; no fit")
                continue
            group = "layer" if k != plan.main_layer else ("gain" if what == "gain" else "variant")
            rows.append(fit_row(name, k, data, kind=spec.kind, gain=spec.gain, group=group))
    return rows


def run_optimizers(checkpoints_dir: Path | None, n_tasks: int, steps: int, progress: bool = True
                   ) -> list[dict[str, Any]]:
    """Probe hidden layer 1 of the paper's teleport task (samples 0 and 1) under every compare method and
    fit the two-constant ODE per task; report medians over tasks. (Here the network trains on all 20
    samples and has one hidden layer, so the two-point model is only an approximation.)"""
    from metatele import evaluate, tasks

    test = tasks.sample(range(tasks.EVAL_FIRST_SEED, tasks.EVAL_FIRST_SEED + n_tasks))
    valid = tasks.sample(range(tasks.VALID_FIRST_SEED, tasks.VALID_FIRST_SEED + 16))
    methods = evaluate.methods_for(checkpoints_dir, valid, steps, "cpu")
    Dx, Ds = repdyn.pair_constants(test.X, test.Y)
    rows = []
    for res in evaluate.evaluate(methods, test, steps, progress=progress, probe_layer=1):
        fits = [repdyn.fit(res.repdyn[b], float(Dx[b]), float(Ds[b])) for b in range(n_tasks)
                if np.isfinite(res.repdyn[b]).all()]
        if not fits:
            continue
        med = lambda xs: float(np.median(xs))  # noqa: E731
        rows.append({"model": f"teleport-task/{res.name}", "layer": 1, "eta_h": med([f.eta_h for f in fits]),
                     "eta_y": med([f.eta_y for f in fits]), "r2_H": med([f.r2_H for f in fits]),
                     "r2_Y": med([f.r2_Y for f in fits]), "r2_w": med([f.r2_w for f in fits]),
                     "eta_ratio": med([f.eta_h / f.eta_y for f in fits]), "n_fitted": len(fits), "group": "optimizer"})
    return rows


def _figures(rows: list[dict[str, Any]], plan: Plan, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = [r for r in rows if r["group"] == "variant"]
    fig, axes = plt.subplots(len(variants), 3, figsize=(12, 2.6 * len(variants)), squeeze=False)
    for i, r in enumerate(variants):
        f_t = np.unique(np.linspace(0, len(r["_data"]) - 1, len(r["_pred"])).round().astype(int))
        for j, name in enumerate(("H = ‖Δh‖²", "Yd = ‖Δy‖²", "w")):
            ax = axes[i, j]
            ax.plot(r["_data"][:, j], color="k", lw=2, alpha=0.4, label="network")
            ax.plot(f_t, r["_pred"][:, j], "--", color="C3", label="ODE fit")
            ax.set_title(f"{r['kind']} L{r['layer']}: {name}  R²={r[('r2_H', 'r2_Y', 'r2_w')[j]]:.3f}", fontsize=8)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "fits_by_architecture.png", dpi=90)
    plt.close(fig)

    # the sweep's points, plus the default network (the leaky-ReLU variant at the main layer)
    gains = sorted((r for r in rows if r["group"] == "gain" or (r["group"] == "variant" and r["kind"] == "leaky_relu")),
                   key=lambda r: r["gain"])
    fig, ax = plt.subplots(figsize=(6, 4))
    g = [r["gain"] for r in gains]
    for key, style in (("H0", "o-"), ("H_end", "s-"), ("A_low", "^--"), ("H_inf", "x:")):
        ax.plot(g, [r[key] for r in gains], style, label=key)
    ax.set_yscale("log")
    ax.set_xlabel("init gain")
    ax.set_ylabel("representational distance")
    ax.set_title(f"lazy (H∞≈H0) vs rich (H∞≈A_low), layer {plan.main_layer}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "gain_sweep.png", dpi=90)
    plt.close(fig)

    layers = sorted((r for r in rows if r.get("kind") == "leaky_relu" and r.get("gain") == plan.base.gain
                     and r["group"] in ("layer", "variant")), key=lambda r: r["layer"])
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in ("r2_H", "r2_Y", "r2_w"):
        ax.plot([r["layer"] for r in layers], [max(r[key], -1) for r in layers], "o-", label=key)
    ax.set_xlabel("hidden layer")
    ax.set_ylabel("R² (clipped at −1)")
    ax.set_title("two-constant ODE fit quality by layer")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "r2_by_layer.png", dpi=90)
    plt.close(fig)


def _table(rows: list[dict[str, Any]]) -> str:
    lines = ["| group | model | layer | η_h | η_y | R²(H) | R²(Yd) | R²(w) | H0 | H_end | A_low | H∞ |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        def f(k: str) -> str:
            v = r.get(k)
            return "" if v is None else f"{v:.3g}"
        lines.append(f"| {r['group']} | {r['model']} | {r['layer']} | {f('eta_h')} | {f('eta_y')} | {f('r2_H')} | "
                     f"{f('r2_Y')} | {f('r2_w')} | {f('H0')} | {f('H_end')} | {f('A_low')} | {f('H_inf')} |")
    return "\n".join(lines) + "\n"


def main(quick: bool, out: Path, json_path: str | None, checkpoints_dir: Path | None, n_tasks: int = 8,
         progress: bool = True) -> int:
    import json

    from metatele.checkpoints import atomic_write_text

    plan = QUICK if quick else FULL
    out.mkdir(parents=True, exist_ok=True)
    rows = run_paper(plan, progress)
    if not quick:  # ~6 s per fitted task and method: part of the full run only
        rows += run_optimizers(checkpoints_dir, n_tasks, 100, progress)
    _figures(rows, plan, out)
    table = _table(rows)
    atomic_write_text(out / "repdyn.md", table)
    print(table, end="")
    fits = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
    if json_path:
        atomic_write_text(json_path, json.dumps({"fits": fits}, indent=1))
    print(f"wrote {out}/repdyn.md and figures fits_by_architecture.png, gain_sweep.png, r2_by_layer.png"
          + (f"; {json_path}" if json_path else ""))
    return 0
