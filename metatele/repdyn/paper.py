"""The experiments of van Rossem & Saxe (2024), reproduced, and the probe applied to metatele's optimizers:
the networks, the plan of runs, running them one process per core, and the `metatele repdyn` entry point.
Formulas are in `metatele.repdyn.theory`; figures and tables in `metatele.repdyn.figures`."""
from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from metatele.evaluation.compare import baselines, evaluate, learned
from metatele.io import atomic_write_text, json_text, write_files
from metatele.repdyn.figures import figures, tables
from metatele.repdyn.fit import Fit, fit
from metatele.repdyn.probe import Probe, RepdynRecorder, pair_constants
from metatele.repdyn.theory import fixed_point
from metatele.reporting.tensorboard import Point, write_run
from metatele.signals import sigint_ignored_by_children
from metatele.tasks import sample
from metatele.tasks.seeds import EVAL_FIRST_SEED, VALID_FIRST_SEED

DX, DS = 1.0, 0.5
X_PAIR = torch.tensor([[-1.0], [-1.0 + math.sqrt(DX)]])
Y_PAIR = torch.tensor([[0.6], [0.6 + math.sqrt(DS)]])
ACTS = {"leaky_relu": nn.LeakyReLU, "relu": nn.ReLU, "tanh": nn.Tanh}


@dataclass(frozen=True)
class NetSpec:
    kind: str = "leaky_relu"   # leaky_relu | relu | tanh | resnet (leaky ReLU with skip connections)
    depth: int = 20
    width: int = 500
    gain: float = 1.0
    lr: float = 0.01
    steps: int = 3000
    seed: int = 0

    @property
    def label(self) -> str:
        """The network's name in tables and figures (the seed is not part of it)."""
        return f"{self.kind} gain={self.gain:g} lr={self.lr:g} {self.depth}x{self.width}"


class PaperNet(nn.Module):
    """depth hidden layers of width units, then a linear readout; Xavier-normal weights with gain
    `gain`, zero biases. For kind "resnet" hidden layer k ≥ 3 adds a skip from two layers back:
    h_k = σ(W_k h_{k−1} + b_k) + h_{k−2}. forward: x (n, 1) → (y (n, 1), [h_1 … h_depth] each (n, width))."""

    def __init__(self, s: NetSpec) -> None:
        super().__init__()
        torch.manual_seed(s.seed)
        self.act = ACTS.get(s.kind, nn.LeakyReLU)()
        self.skip = s.kind == "resnet"
        self.hidden = nn.ModuleList([nn.Linear(1 if k == 0 else s.width, s.width) for k in range(s.depth)])
        self.readout = nn.Linear(s.width, 1)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight, gain=s.gain)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        hs: list[torch.Tensor] = []
        h = x
        for k, lin in enumerate(self.hidden):
            h = self.act(lin(h)) + (hs[k - 2] if self.skip and k >= 2 else 0)
            hs.append(h)
        return self.readout(h), hs


def train_two_point(s: NetSpec, layers: list[int]) -> dict[int, np.ndarray]:
    """Full-batch GD on the two points; (T, 3) series of (H, Yd, w) per probed hidden layer (counted
    from 1), recorded before each update. Uses the caller's torch threads (`in_processes` gives each worker
    --threads, default 1: with a batch of two points, more threads only add synchronization)."""
    net = PaperNet(s)
    opt = torch.optim.SGD(net.parameters(), lr=s.lr)
    probes = {k: Probe(Y_PAIR[1] - Y_PAIR[0]) for k in layers}
    for _ in range(s.steps):
        y, hs = net(X_PAIR)
        for k, p in probes.items():
            p.record(hs[k - 1], y)
        loss = 0.5 * (y - Y_PAIR).pow(2).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: p.series()[0] for k, p in probes.items()}


@dataclass(frozen=True)
class Plan:
    variants: tuple[NetSpec, ...]  # (a) architectures; variants[0] is the default network
    gains: tuple[NetSpec, ...]     # (b) init-gain sweep of the default network
    layers: tuple[int, ...]        # (c) layers fitted on every `profiled` variant
    main_layer: int
    seeds: int                     # independent initialisations per network
    profiled: tuple[str, ...]      # kinds of the variants fitted at every layer in `layers`


# Gains and learning rates per network are the authors' published settings (their "2 points" settings
# table): the skip-connection net starts small (gain 0.1, lr 0.02), and the gain sweep lowers the
# learning rate as the gain grows so that every run is stable for 3000 steps.
FULL = Plan(
    variants=(NetSpec(), NetSpec(kind="relu"), NetSpec(kind="tanh"), NetSpec(kind="resnet", gain=0.1, lr=0.02)),
    gains=tuple(NetSpec(gain=g, lr=lr) for g, lr in ((0.9, 0.03), (1.0, 0.01), (1.1, 0.005), (1.2, 0.0025),
                                                    (1.3, 0.0015), (1.4, 0.0005))),
    layers=(1, 2, 3, 5, 8, 11, 12, 14, 17, 19), main_layer=11, seeds=5, profiled=("leaky_relu", "resnet"))
# --quick: same depth and layer, width 500 → 32 and 3000 → 800 steps, two seeds, fewer gains and layers,
# and no optimizer probe (CPU time).
QUICK = Plan(
    variants=tuple(replace(v, width=32, steps=800) for v in FULL.variants),
    gains=tuple(replace(FULL.gains[i], width=32, steps=800) for i in (1, 3, 5)),
    layers=(1, 3, 11, 17), main_layer=11, seeds=2, profiled=("leaky_relu",))


def _fit_fields(f: Fit) -> dict[str, float]:
    return {"eta_h": f.eta_h, "eta_y": f.eta_y, "eta_ratio": f.eta_h / f.eta_y, "r2_H": f.r2_H, "r2_Y": f.r2_Y,
            "r2_w": f.r2_w}


def fit_row(model: str, layer: int, data: np.ndarray, **extra: Any) -> dict[str, Any]:
    f = fit(data, DX, DS)
    fp = fixed_point(data[0, 0], data[0, 1], f.eta_h, f.eta_y, DX, DS)
    return {"model": model, "layer": layer, **_fit_fields(f), "H0": float(data[0, 0]), "H_end": float(data[-1, 0]),
            "A_low": fp.A_low, "A_high": fp.A_high, "H_inf": fp.H_inf, **extra, "_data": data, "_pred": f.pred,
            "_t": f.t.round().astype(int)}


def _net_job(group: str, spec: NetSpec, layers: list[int], main_layer: int) -> list[dict[str, Any]]:
    """Train one network and fit every probed layer (one worker process's unit of work)."""
    rows = []
    for k, data in train_two_point(spec, layers).items():
        if not np.isfinite(data).all():  # diverged: say so instead of fitting
            print(f"repdyn: {spec.label} seed {spec.seed} diverged; no fit")
            continue
        rows.append(fit_row(spec.label, k, data, kind=spec.kind, gain=spec.gain, lr=spec.lr, seed=spec.seed,
                            group=group if k == main_layer else "layer"))
    return rows


def paper_jobs(plan: Plan) -> list[tuple[str, NetSpec, list[int], int]]:
    """One (group, spec, probed layers, main layer) per network to train: every variant (the `profiled`
    ones probed at all plan.layers) and every gain except the default network's, for each seed."""
    jobs = [("variant", replace(v, seed=s), list(plan.layers) if v.kind in plan.profiled else [plan.main_layer],
             plan.main_layer) for s in range(plan.seeds) for v in plan.variants]
    return jobs + [("gain", replace(g, seed=s), [plan.main_layer], plan.main_layer) for s in range(plan.seeds)
                   for g in plan.gains if g != plan.variants[0]]


def run_paper(plan: Plan, workers: int = 0, progress: bool = True, threads: int = 1) -> list[dict[str, Any]]:
    """(a) architectures at the main layer, (b) init-gain sweep, (c) fit quality by layer, each for
    plan.seeds initialisations; one process of `threads` threads per network (workers=0: one per core)."""
    jobs = paper_jobs(plan)
    return [r for rs in in_processes(_net_job, jobs, workers, progress, "repdyn networks", threads) for r in rs]


def aggregate_seeds(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median and minimum over seeds of each (group, model, layer)'s fit, in first-seen order."""
    keys: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for r in rows:
        keys.setdefault((r["group"], r["model"], r["layer"]), []).append(r)
    out = []
    for (group, model, layer), rs in keys.items():
        s = {"group": group, "model": model, "layer": layer, "n": len(rs), "kind": rs[0].get("kind"),
             "gain": rs[0].get("gain")}
        for k in ("eta_h", "eta_y", "eta_ratio", "r2_H", "r2_Y", "r2_w", "H0", "H_end", "A_low", "H_inf"):
            vals = [r[k] for r in rs if r.get(k) is not None]
            if vals:
                s[k] = float(np.median(vals))
                if k.startswith("r2"):
                    s[k + "_min"] = float(np.min(vals))
        out.append(s)
    return out


def _task_fit(method: str, task: int, data: np.ndarray, Dx: float, Ds: float) -> dict[str, Any]:
    return {"group": "optimizer", "model": f"teleport-task/{method}", "layer": 1, "seed": task,
            **_fit_fields(fit(data, Dx, Ds))}


def run_optimizers(checkpoints_dir: Path | None, n_tasks: int, steps: int, workers: int = 0, progress: bool = True,
                   threads: int = 1) -> list[dict[str, Any]]:
    """Probe hidden layer 1 of the paper's teleport task (samples 0 and 1) under every compare method and
    fit the two-constant ODE per task (one row per task; `summarize` takes medians). Here the network
    trains on all 20 samples and has one hidden layer, so the two-point model is only an approximation."""
    test = sample(range(EVAL_FIRST_SEED, EVAL_FIRST_SEED + n_tasks))
    valid = sample(range(VALID_FIRST_SEED, VALID_FIRST_SEED + 16))
    found = learned(checkpoints_dir, test.widths, "cpu")[0] if checkpoints_dir else []  # (entries, skipped)
    entries = baselines(valid, steps) + found
    Dx, Ds = pair_constants(test.X, test.Y)
    jobs = [(res.name, b, res.records["repdyn"].values[b], float(Dx[b]), float(Ds[b]))
            for res in evaluate(entries, test, steps, progress=progress, recorders=[RepdynRecorder(layer=1)])
            for b in range(n_tasks) if np.isfinite(res.records["repdyn"].values[b]).all()]
    return in_processes(_task_fit, jobs, workers, progress, "repdyn optimizer fits", threads)


def _call(fn_job: tuple[Callable[..., Any], tuple[Any, ...]]) -> Any:
    fn, job = fn_job
    return fn(*job)


def in_processes(fn: Callable[..., Any], jobs: list[tuple[Any, ...]], workers: int, progress: bool, desc: str,
                 threads: int = 1) -> list[Any]:
    """[fn(*job) for job in jobs] in `workers` processes (0: one per core) of `threads` torch threads each.
    The workers ignore Ctrl-C: this process turns it into one line, and leaving the pool terminates them."""
    workers = min(workers or os.cpu_count() or 1, max(len(jobs), 1))
    with sigint_ignored_by_children():
        pool = get_context("spawn").Pool(workers, initializer=torch.set_num_threads, initargs=(threads,))
    with pool:
        return list(tqdm(pool.imap(_call, [(fn, job) for job in jobs]), total=len(jobs), desc=desc,
                         disable=not progress))


def write_tensorboard(rows: list[dict[str, Any]], logdir: Path) -> None:
    """The recorded (H, Yd, w) series of each network and layer, and the fitted ODE on the fit's grid, as
    TensorBoard scalars (one run per model, layer and seed; tags recorded/* and fit/*)."""
    for r in rows:
        if "_data" not in r:
            continue
        recorded = [Point(f"recorded/{key}", float(r["_data"][t, j]), t)
                    for j, key in enumerate(("H", "Yd", "w")) for t in range(0, len(r["_data"]), 10)]
        fitted = [Point(f"fit/{key}", float(r["_pred"][i, j]), int(t))
                  for j, key in enumerate(("H", "Yd", "w")) for i, t in enumerate(r["_t"])]
        write_run(logdir / f"{r['model']}_layer{r['layer']}_seed{r['seed']}", recorded + fitted)


def main(quick: bool, out: Path, json_path: str | None, checkpoints_dir: Path | None, n_tasks: int = 8,
         workers: int = 0, progress: bool = True, threads: int = 1, logdir: Path | None = None) -> int:
    """`metatele repdyn`: the paper's runs (and, unless quick, the optimizer probe) → out/repdyn.md, figures,
    optionally JSON and TensorBoard series in `logdir`."""
    plan = QUICK if quick else FULL
    rows = run_paper(plan, workers, progress, threads)
    if not quick:  # ~6 s per fitted task and method: part of the full run only
        rows += run_optimizers(checkpoints_dir, n_tasks, 100, workers, progress, threads)
    summary = aggregate_seeds(rows)
    text = tables(rows, summary)
    write_files(out, {"repdyn.md": text, **figures(rows, summary, plan)})
    if logdir is not None:
        write_tensorboard(rows, logdir)
    print(text, end="")
    if json_path:
        fits = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
        atomic_write_text(json_path, json_text({"fits": fits, "summary": summary}, indent=1))
    print(f"wrote {out}/repdyn.md and figures fits_by_architecture.png, gain_sweep.png, r2_by_layer.png"
          + (f"; {json_path}" if json_path else "") + (f"; TensorBoard: tensorboard --logdir {logdir}" if logdir else ""))
    return 0
