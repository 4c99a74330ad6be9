"""`metatele generalization`: the paper's §5 generalization experiments (its Table 1 and Fig. 4) on our data.

The network is the paper's bias-free LeakyReLU(0.1) MLP d0-16-10-10 trained by SGD (lr 1e-2, mini-batch 20;
an epoch is ⌊N/20⌋ steps). A run's seed draws its initial weights (U(±1/√fan_in), as nn.Linear) and its own
order over the training set (`metatele.tasks.ClassificationFamily`; the paper used one sequential order).

(a) Correlation. `runs` runs in each of `seed_sets` disjoint seed sets (A, B, ...; seed (i + 1)·54321 for run i,
the paper's init seeds). At the final weights, on `measure_batches` batches of 200 training samples (one seeded
draw shared by all runs):
- phi: sharpness, the mean loss increase over the paper's radii and antithetic isotropic directions;
- phi_paper: the paper's statistic, the mean perturbed loss (with L(w)) over uniform positive directions;
- psi: orbit curvature on the 200-sample batches (the least-squares extension at the 16-wide layer, as the
  paper computes it);
- psi_exact: orbit curvature on the first `exact_batch` samples of each batch, where the orbit is the exact
  level-set action.
Pearson and Spearman correlations (bootstrap 95% CIs) with the validation loss and with the generalization gap
(validation − training loss, both on the full sets at the final weights), per seed set and pooled.

(b) Teleport. `teleport_seeds` runs train to epoch `teleport_epoch`; each is copied into the variants none,
random (a random group element of the largest size the ascent can reach) and the four objectives of
`metatele.teleport.targets`, teleported once, and all train on to `epochs`. Groups:
- gl: the paper's GL(k) action, exact on a teleport batch of `exact_batch` samples (the paper used 2000 samples
  and an approximate action; here no exact action exists beyond 16), so the function off that batch changes:
  the change of the training and validation loss at the teleport is reported;
- diag: positive rescaling, which keeps the function on all data.
The objective is evaluated on a 200-sample probe batch that contains the teleport batch, with `teleport_dirs`
fixed draws (with 4 sharpness directions the ascent fits those directions: the objective fell 28–44% while φ
measured along 16 other directions rose, on two mnist5k seeds); φ and ψ are re-measured on the probe before and
after with other random draws, which is what the tables report next to the objective's own change. Validation loss and accuracy per epoch are compared
with the no-teleport copy of the same seed (paired differences, Student-t 95% CIs over seeds).
"""
from __future__ import annotations

import copy
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from metatele import datasets
from metatele.checkpoints import atomic_write_csv, atomic_write_text
from metatele.errors import ConfigError
from metatele.evaluation.stats import CORRELATIONS, correlation_ci, fmt, t_interval
from metatele.methods import baseline
from metatele.nn import inspect_mlp, to_sequential
from metatele.plotting import pyplot, save_png
from metatele.step import inner_step
from metatele.tasks import ClassificationFamily, ClassificationTasks, LeakyReLU, mlp
from metatele.teleport.measures import PAPER_RADII, curvature, sharpness
from metatele.teleport.sequential import random_teleport_
from metatele.teleport.targets import OBJECTIVES, teleport_to_target_

__all__ = ["Plan", "FULL", "QUICK", "VARIANTS", "MEASURES", "GROUPS", "default_datasets", "correlation_study",
           "teleport_study", "main"]

PAPER_LR = 1e-2
PAPER_BATCH = 20
HIDDEN = (16, 10)
SLOPE = 0.1
MEASURE_BATCH = 200
SEED_STRIDE = 54321
VARIANTS = ("none", "random", *OBJECTIVES)
GROUPS = ("gl", "diag")
MEASURES = {"phi": "φ sharpness", "phi_paper": "φ paper's statistic", "psi": "ψ curvature (200, lsq)",
            "psi_exact": "ψ curvature (exact batch)"}
PAPER_SIGN = {"phi": "+", "phi_paper": "+", "psi": "−", "psi_exact": "−"}
TARGETS = {"val_loss": "validation loss", "gap": "generalization gap"}
SHARP_SEED, PAPER_SEED, CURV_SEED, EVAL_SEED = 1, 2, 3, 4  # direction draws (shared by all runs)


@dataclass(frozen=True)
class Plan:
    """Sizes of one study (`FULL` or `QUICK`); see the module docstring."""

    epochs: int = 40
    runs: int = 50
    seed_sets: int = 2
    measure_batches: int = 10
    sharp_dirs: int = 4
    paper_dirs: int = 2
    curv_dirs: int = 16
    exact_batch: int = 8
    teleport_seeds: int = 10
    teleport_epoch: int = 20
    teleport_steps: int = 10
    step_gl: float = 0.003
    step_diag: float = 0.1
    teleport_dirs: int = 16
    n_boot: int = 10000

    def step(self, group: str) -> float:
        return self.step_gl if group == "gl" else self.step_diag


FULL = Plan()
QUICK = Plan(epochs=2, runs=5, measure_batches=1, sharp_dirs=2, paper_dirs=1, curv_dirs=4, teleport_seeds=2,
             teleport_epoch=1, teleport_steps=2, teleport_dirs=2, n_boot=500)


def default_datasets() -> list[str]:
    """mnist5k and digits, and fashion-mnist when Debian's dataset-fashion-mnist is installed."""
    return ["mnist5k", "digits"] + (["fashion-mnist"] if (datasets.FASHION_DIR / "train-images-idx3-ubyte.gz").is_file()
                                    else [])


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def evaluate(weights: Sequence[torch.Tensor], X: torch.Tensor, y: torch.Tensor, act: LeakyReLU,
             chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy and accuracy of B networks (weights[m] (B, ...)) on X (N, d0), y (N,): two (B,) tensors."""
    B, N = weights[0].shape[0], X.shape[0]
    loss = torch.zeros(B, dtype=torch.float64, device=X.device)
    correct = torch.zeros(B, dtype=torch.float64, device=X.device)
    with torch.no_grad():
        for i in range(0, N, chunk):
            Xc, yc = X[i:i + chunk], y[i:i + chunk]
            out = mlp.forward(weights, Xc.T[None].expand(B, -1, -1), act)
            loss += mlp.cross_entropy_loss(out, yc.expand(B, -1)).double() * Xc.shape[0]
            correct += (out.argmax(1) == yc).sum(1).double()
    return loss / N, correct / N


def _train(task: ClassificationTasks, weights: list[torch.Tensor], epochs: range, steps_per_epoch: int,
           after_epoch: Callable[[int, list[torch.Tensor]], None] | None = None) -> list[torch.Tensor]:
    """Plain SGD (the paper's lr) through `inner_step`, epoch by epoch."""
    method = baseline("gd", lr=PAPER_LR)
    with torch.no_grad():
        for epoch in epochs:
            for t in range(epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch):
                weights = [w.detach() for w in inner_step(method, weights, None, task, t).weights]
            if after_epoch is not None:
                after_epoch(epoch, weights)
    return weights


def _model(weights: Sequence[torch.Tensor], b: int, dtype: torch.dtype) -> nn.Sequential:
    """Network b of the batch as an nn.Sequential (Linear, LeakyReLU, ...) without biases."""
    return to_sequential(weights, LeakyReLU(SLOPE), index=b, dtype=dtype)


def _seeds(count: int, offset: int) -> list[int]:
    return [(i + 1 + offset) * SEED_STRIDE for i in range(count)]


def _setup(dataset: str, seeds: list[int], device: str) -> tuple[datasets.Dataset, ClassificationTasks, int]:
    data = datasets.load(dataset)
    fam = ClassificationFamily(dataset, (data.n_features, *HIDDEN, data.n_classes), PAPER_BATCH)
    return data, fam.sample(seeds, device=device), data.X_train.shape[0] // PAPER_BATCH


def _measure_batches(data: datasets.Dataset, plan: Plan, device: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    perm = torch.randperm(data.X_train.shape[0], generator=torch.Generator().manual_seed(0))
    X, y = data.X_train.to(device, torch.float64), data.y_train.to(device)
    n = min(plan.measure_batches, data.X_train.shape[0] // MEASURE_BATCH)
    return [(X[idx], y[idx]) for idx in perm[: n * MEASURE_BATCH].to(device).split(MEASURE_BATCH)]


def run_measures(model: nn.Sequential, batches: list[tuple[torch.Tensor, torch.Tensor]], plan: Plan) -> dict[str, float]:
    """phi, phi_paper, psi and psi_exact of one float64 network (module docstring)."""
    with torch.no_grad():
        base = float(torch.stack([F.cross_entropy(model(X), y) for X, y in batches]).mean())
        phi = sharpness(model, F.cross_entropy, batches, PAPER_RADII, plan.sharp_dirs, SHARP_SEED)
        paper = sharpness(model, F.cross_entropy, batches, PAPER_RADII, plan.paper_dirs, PAPER_SEED, dist="uniform")
        psi = [curvature(model, X, plan.curv_dirs, CURV_SEED + i) for i, (X, _) in enumerate(batches)]
        psi_x = [curvature(model, X[: plan.exact_batch], plan.curv_dirs, CURV_SEED + i) for i, (X, _) in enumerate(batches)]
    return {"phi": float(phi), "phi_paper": float(paper) + base, "psi": float(torch.stack(psi).mean()),
            "psi_exact": float(torch.stack(psi_x).mean())}


def correlation_study(dataset: str, plan: Plan, device: str, seed_offset: int = 0) -> tuple[list[dict[str, Any]],
                                                                                             list[dict[str, Any]]]:
    """Train plan.runs × plan.seed_sets SGD runs and correlate their measures with generalization.
    Returns (per-run rows, correlation table rows)."""
    seeds = _seeds(plan.runs * plan.seed_sets, seed_offset)
    data, task, spe = _setup(dataset, seeds, device)
    t0 = time.perf_counter()
    W = _train(task, task.init_weights(), range(plan.epochs), spe)
    _log(f"[{dataset}] correlation: {len(seeds)} SGD runs × {plan.epochs} epochs in {time.perf_counter() - t0:.0f} s")
    act = task.activation
    tr_loss, _ = evaluate(W, data.X_train.to(device), data.y_train.to(device), act)
    va_loss, va_acc = evaluate(W, data.X_val.to(device), data.y_val.to(device), act)
    batches = _measure_batches(data, plan, device)
    t0 = time.perf_counter()
    rows = []
    for b, seed in enumerate(seeds):
        row: dict[str, Any] = {"dataset": dataset, "set": chr(ord("A") + b // plan.runs), "seed": seed,
                               "train_loss": float(tr_loss[b]), "val_loss": float(va_loss[b]),
                               "val_acc": float(va_acc[b]), "gap": float(va_loss[b] - tr_loss[b])}
        finite = all(bool(torch.isfinite(w[b]).all()) for w in W) and math.isfinite(row["val_loss"])
        row.update(run_measures(_model(W, b, torch.float64), batches, plan) if finite
                   else {m: math.nan for m in MEASURES})
        rows.append(row)
    _log(f"[{dataset}] correlation: measures of {len(seeds)} runs in {time.perf_counter() - t0:.0f} s")
    return rows, correlation_table(rows, plan)


def correlation_table(rows: list[dict[str, Any]], plan: Plan) -> list[dict[str, Any]]:
    """Pearson and Spearman of each measure with each target, per seed set and pooled (runs with a non-finite
    value are left out and counted)."""
    sets = sorted({r["set"] for r in rows})
    groups = [(s, [r for r in rows if r["set"] == s]) for s in sets] + ([("+".join(sets), rows)] if len(sets) > 1 else [])
    table = []
    for name, rs in groups:
        for m in MEASURES:
            for target in TARGETS:
                ok = [r for r in rs if math.isfinite(r[m]) and math.isfinite(r[target])]
                out: dict[str, Any] = {"set": name, "measure": m, "target": target, "paper_sign": PAPER_SIGN[m],
                                       "n": len(ok), "n_excluded": len(rs) - len(ok)}
                for method in CORRELATIONS:
                    c = correlation_ci([r[m] for r in ok], [r[target] for r in ok], method, n_boot=plan.n_boot)
                    out.update({method: c["r"], f"{method}_lo": c["lo"], f"{method}_hi": c["hi"]})
                table.append(out)
    return table


def _probe_measures(model: nn.Sequential, X: torch.Tensor, y: torch.Tensor, plan: Plan) -> tuple[float, float]:
    """φ and ψ on the probe batch, with twice the correlation's sharpness directions and other draws."""
    m64 = copy.deepcopy(model).double()
    with torch.no_grad():
        phi = sharpness(m64, F.cross_entropy, [(X, y)], PAPER_RADII, 2 * plan.sharp_dirs, EVAL_SEED)
        psi = curvature(m64, X, plan.curv_dirs, EVAL_SEED)
    return float(phi), float(psi)


def teleport_study(dataset: str, plan: Plan, device: str, seed_offset: int = 0) -> dict[str, Any]:
    """Teleport once mid-training, every group and variant from the same weights; returns the per-teleport
    records and the per-epoch curves (val_loss, val_acc, train_loss: (arms, seeds, epochs) nested lists, arm 0
    being no teleport, then one per (group, variant) of GROUPS × VARIANTS[1:])."""
    seeds = _seeds(plan.teleport_seeds, seed_offset)
    arms = [("none", "none"), *[(g, v) for g in GROUPS for v in VARIANTS[1:]]]
    S, V = len(seeds), len(arms)
    data, task, spe = _setup(dataset, seeds, device)
    act = task.activation
    Xtr, ytr = data.X_train.to(device), data.y_train.to(device)
    Xva, yva = data.X_val.to(device), data.y_val.to(device)
    curves = {k: np.full((V, S, plan.epochs), np.nan) for k in ("val_loss", "val_acc", "train_loss")}

    def record(epoch: int, weights: list[torch.Tensor]) -> None:
        vl, va = evaluate(weights, Xva, yva, act)
        tl, _ = evaluate(weights, Xtr, ytr, act)
        for key, val in (("val_loss", vl), ("val_acc", va), ("train_loss", tl)):
            curves[key][:, :, epoch] = val.cpu().numpy().reshape(-1, S)  # before the teleport: one copy for all

    t0 = time.perf_counter()
    W = _train(task, task.init_weights(), range(plan.teleport_epoch), spe, record)
    Wv = [w.repeat(V, 1, 1) for w in W]  # network a·S + s is arm a of seed s
    before_tl, _ = evaluate(W, Xtr, ytr, act)
    before_vl, _ = evaluate(W, Xva, yva, act)
    records = []
    t1 = time.perf_counter()
    for s, seed in enumerate(seeds):
        idx = torch.randperm(Xtr.shape[0], generator=torch.Generator().manual_seed(seed + 1))[:MEASURE_BATCH].to(device)
        Xp, yp = Xtr[idx].double(), ytr[idx]
        Xt, yt = Xp[: plan.exact_batch], yp[: plan.exact_batch]
        phi0, psi0 = _probe_measures(_model(W, s, W[0].dtype), Xp, yp, plan)
        for a, (group, name) in enumerate(arms[1:], 1):
            b = a * S + s
            model = _model(Wv, b, Wv[0].dtype)
            w0 = torch.cat([p.detach().flatten() for p in model.parameters()])
            if name == "random":
                res = random_teleport_(model, Xt, yt, F.cross_entropy, plan.step(group) * plan.teleport_steps,
                                       group=group, generator=torch.Generator().manual_seed(seed))
                drift, obj0, obj1 = res.drift, math.nan, math.nan
            else:
                res = teleport_to_target_(model, Xt, yt, name, (Xp, yp), steps=plan.teleport_steps,
                                          step=plan.step(group), group=group, n_dirs=plan.teleport_dirs, seed=seed)
                drift, obj0, obj1 = res.drift, res.objective_before, res.objective_after
            w1 = torch.cat([p.detach().flatten() for p in model.parameters()])
            phi1, psi1 = _probe_measures(model, Xp, yp, plan)
            for m, w in enumerate(inspect_mlp(model).get_weights()):
                Wv[m][b] = w[0]
            records.append({"dataset": dataset, "group": group, "variant": name, "seed": seed, "arm": a,
                            "objective_before": obj0, "objective_after": obj1, "phi_before": phi0,
                            "phi_after": phi1, "psi_before": psi0, "psi_after": psi1, "batch_drift": drift, "dw_rel": float((w1 - w0).norm() / w0.norm())})
    after_tl, _ = evaluate(Wv, Xtr, ytr, act)
    after_vl, _ = evaluate(Wv, Xva, yva, act)
    for r, s in zip(records, [s for s in range(S) for _ in arms[1:]]):
        b = r["arm"] * S + s
        r["train_loss_jump"] = float(after_tl[b] - before_tl[s])
        r["val_loss_jump"] = float(after_vl[b] - before_vl[s])
    t2 = time.perf_counter()
    task_v = replace(task, order=task.order.repeat(V, 1), weights=Wv, seeds=task.seeds * V)
    _train(task_v, Wv, range(plan.teleport_epoch, plan.epochs), spe, record)
    _log(f"[{dataset}] teleport: {S} seeds × {V} arms, {plan.epochs} epochs; the {S * (V - 1)} teleports took "
         f"{t2 - t1:.0f} s, training {time.perf_counter() - t0 - (t2 - t1):.0f} s")
    return {"dataset": dataset, "seeds": seeds, "arms": [list(a) for a in arms], "records": records,
            "curves": {k: v.tolist() for k, v in curves.items()}}


def teleport_table(result: dict[str, Any], plan: Plan) -> list[dict[str, Any]]:
    """Per group and variant: φ and ψ ratios after/before, the drift, the loss jumps at the teleport, and the
    paired validation loss/accuracy differences to no teleport at the last epoch and averaged over the epochs
    after the teleport (Student-t CIs over seeds)."""
    curves = {k: np.asarray(v) for k, v in result["curves"].items()}
    rows = []
    for a, (group, name) in enumerate(result["arms"][1:], 1):
        recs = [r for r in result["records"] if r["arm"] == a]
        row: dict[str, Any] = {"dataset": result["dataset"], "group": group, "variant": name, "n": len(recs)}

        def put(key: str, x: Sequence[float] | np.ndarray) -> None:
            m, lo, hi = t_interval(np.asarray(x, float))
            row.update({key: float(m), f"{key}_lo": float(lo), f"{key}_hi": float(hi)})

        put("objective_ratio", [r["objective_after"] / r["objective_before"] for r in recs])
        put("phi_ratio", [r["phi_after"] / r["phi_before"] for r in recs])
        put("psi_ratio", [r["psi_after"] / r["psi_before"] for r in recs])
        put("train_loss_jump", [r["train_loss_jump"] for r in recs])
        put("val_loss_jump", [r["val_loss_jump"] for r in recs])
        drifts = [r["batch_drift"] for r in recs if math.isfinite(r["batch_drift"])]
        row["batch_drift_max"] = max(drifts) if drifts else math.nan
        row["dw_rel"] = float(np.mean([r["dw_rel"] for r in recs]))
        after = slice(plan.teleport_epoch, plan.epochs)
        for key in ("val_loss", "val_acc"):
            diff = curves[key][a] - curves[key][0]        # (seeds, epochs)
            put(f"{key}_diff_final", diff[:, -1])
            put(f"{key}_diff_mean", diff[:, after].mean(axis=1))
        rows.append(row)
    return rows


def _ci(row: dict[str, Any], key: str, digits: str = ".3g") -> str:
    lo, hi = row[f"{key}_lo"], row[f"{key}_hi"]
    return f"{row[key]:{digits}} [{lo:{digits}}, {hi:{digits}}]"


def correlation_markdown(table: list[dict[str, Any]]) -> str:
    lines = ["| seeds | measure | against | paper's sign | n | Pearson r [95% CI] | Spearman ρ [95% CI] |",
             "|---|---|---|---|---|---|---|"]
    for r in table:
        excl = f" ({r['n_excluded']} excluded)" if r["n_excluded"] else ""
        lines.append(f"| {r['set']} | {MEASURES[r['measure']]} | {TARGETS[r['target']]} | {r['paper_sign']} | "
                     f"{r['n']}{excl} | {_ci(r, 'pearson', '+.2f')} | {_ci(r, 'spearman', '+.2f')} |")
    return "\n".join(lines) + "\n"


def teleport_markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| group | variant | objective after/before | φ after/before | ψ after/before | batch drift (max) | "
             "‖Δw‖/‖w‖ | Δ train loss at teleport | Δ val loss at teleport | Δ val loss, last epoch | "
             "Δ val loss, mean after teleport | Δ val acc (pp), last epoch |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        acc = {k: 100 * r[k] for k in ("val_acc_diff_final", "val_acc_diff_final_lo", "val_acc_diff_final_hi")}
        objective = _ci(r, "objective_ratio") if math.isfinite(r["objective_ratio"]) else "n/a"
        lines.append(f"| {r['group']} | {r['variant']} | {objective} | {_ci(r, 'phi_ratio')} | {_ci(r, 'psi_ratio')} | "
                     f"{fmt(r['batch_drift_max']) if math.isfinite(r['batch_drift_max']) else 'n/a'} | "
                     f"{r['dw_rel']:.2g} | {_ci(r, 'train_loss_jump', '+.3f')} | {_ci(r, 'val_loss_jump', '+.3f')} | "
                     f"{_ci(r, 'val_loss_diff_final', '+.3f')} | {_ci(r, 'val_loss_diff_mean', '+.3f')} | "
                     f"{_ci(acc, 'val_acc_diff_final', '+.2f')} |")
    return "\n".join(lines) + "\n"


def _finite_json(x: Any) -> Any:
    """JSON-ready copy: non-finite floats → None (never NaN on disk), finite ones to 7 significant digits."""
    if isinstance(x, float):
        return float(f"{x:.7g}") if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite_json(v) for v in x]
    return x


def scatter_png(rows: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(len(TARGETS), len(MEASURES), figsize=(4 * len(MEASURES), 3.4 * len(TARGETS)))
    sets = sorted({r["set"] for r in rows})
    for i, target in enumerate(TARGETS):
        for j, m in enumerate(MEASURES):
            ax = axes[i][j]
            for k, s in enumerate(sets):
                pts = [(r[m], r[target]) for r in rows if r["set"] == s and math.isfinite(r[m])]
                if pts:
                    ax.scatter(*zip(*pts), s=10, color=f"C{k}", label=f"seed set {s}", alpha=0.7)
            ax.set_xlabel(MEASURES[m])
            ax.set_ylabel(TARGETS[target])
            xs = [r[m] for r in rows if math.isfinite(r[m])]
            if xs and min(xs) > 0 and max(xs) > 3 * min(xs):  # log only where it spreads the points
                ax.set_xscale("log")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{rows[0]['dataset']}: final SGD minima")
    fig.tight_layout()
    save_png(fig, path)


def teleport_png(result: dict[str, Any], plan: Plan, path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(len(GROUPS), 2, figsize=(11, 3.6 * len(GROUPS)), squeeze=False)
    epochs = np.arange(1, plan.epochs + 1)
    for i, group in enumerate(GROUPS):
        for j, (key, scale, label) in enumerate((("val_loss", 1.0, "Δ validation loss"),
                                                 ("val_acc", 100.0, "Δ validation accuracy (pp)"))):
            ax = axes[i][j]
            curve = np.asarray(result["curves"][key])
            for a, (g, name) in enumerate(result["arms"]):
                if g != group:
                    continue
                m, lo, hi = t_interval(scale * (curve[a] - curve[0]))
                colour = f"C{VARIANTS.index(name)}"
                ax.plot(epochs, m, color=colour, label=name)
                ax.fill_between(epochs, lo, hi, color=colour, alpha=0.15)
            ax.axvline(plan.teleport_epoch + 0.5, color="k", lw=0.8, ls=":")
            ax.axhline(0, color="k", lw=0.5)
            ax.set_xlabel("epoch")
            ax.set_ylabel(f"{label} vs no teleport")
            ax.set_title(f"{result['dataset']}, group {group} ({len(result['seeds'])} seeds, t 95% CI)")
            ax.grid(alpha=0.3)
        axes[i][0].legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path)


def write_tensorboard(result: dict[str, Any], logdir: Path) -> None:
    """One run per dataset/group/variant (and dataset/none): mean validation loss/accuracy and training loss per
    epoch, and the paired difference to no teleport with its CI."""
    from torch.utils.tensorboard import SummaryWriter

    curves = {k: np.asarray(v) for k, v in result["curves"].items()}
    for a, (group, name) in enumerate(result["arms"]):
        run = logdir / result["dataset"] / ("none" if a == 0 else f"{group}-{name}")
        with SummaryWriter(str(run)) as w:
            for e in range(curves["val_loss"].shape[2]):
                for key in curves:
                    w.add_scalar(f"mean/{key}", float(curves[key][a, :, e].mean()), e + 1)
                if a:
                    for key in ("val_loss", "val_acc"):
                        m, lo, hi = t_interval(curves[key][a, :, e] - curves[key][0, :, e])
                        w.add_scalar(f"vs_none/{key}_diff", float(m), e + 1)
                        w.add_scalar(f"vs_none/{key}_diff_ci_lo", float(lo), e + 1)
                        w.add_scalar(f"vs_none/{key}_diff_ci_hi", float(hi), e + 1)


def main(dataset_names: Sequence[str] | None, plan: Plan, out: Path, logdir: Path, device: str = "cpu",
         parts: Sequence[str] = ("correlation", "teleport"), seed_offset: int = 0) -> int:
    """Run the study on each dataset; write out/<dataset>/{runs.csv, correlation.csv, correlation.md,
    scatter.png, teleports.csv, teleport.csv, teleport.md, teleport.png, results.json} and TensorBoard runs."""
    names = list(dataset_names) if dataset_names else default_datasets()
    if "correlation" in parts and plan.runs < 3:
        raise ConfigError(f"a correlation needs at least 3 runs per seed set, got --runs {plan.runs}")
    if "teleport" in parts and plan.teleport_seeds < 2:
        raise ConfigError(f"a confidence interval over seeds needs at least 2 teleport seeds, got {plan.teleport_seeds}")
    if "teleport" in parts and not 1 <= plan.teleport_epoch < plan.epochs:
        raise ConfigError(f"the teleport epoch must be in 1..{plan.epochs - 1} (below --epochs), got {plan.teleport_epoch}")
    report = [f"# metatele generalization: {', '.join(names)}\n",
              f"plan: {json.dumps(asdict(plan))}; seed offset {seed_offset}; device {device}\n"]
    for name in names:
        datasets.load(name)  # a missing dataset fails here, before any work
    start = time.perf_counter()
    for name in names:
        t0 = time.perf_counter()
        d = out / name
        d.mkdir(parents=True, exist_ok=True)
        result: dict[str, Any] = {"dataset": name, "plan": asdict(plan), "seed_offset": seed_offset}
        if "correlation" in parts:
            rows, table = correlation_study(name, plan, device, seed_offset)
            atomic_write_csv(d / "runs.csv", rows)
            atomic_write_csv(d / "correlation.csv", table)
            atomic_write_text(d / "correlation.md", correlation_markdown(table))
            scatter_png(rows, d / "scatter.png")
            result.update(runs=rows, correlation=table)
            report += [f"\n## {name}: correlation at the final SGD weights\n\n", correlation_markdown(table)]
        if "teleport" in parts:
            tele = teleport_study(name, plan, device, seed_offset)
            rows = teleport_table(tele, plan)
            atomic_write_csv(d / "teleports.csv", tele["records"])
            atomic_write_csv(d / "teleport.csv", rows)
            atomic_write_text(d / "teleport.md", teleport_markdown(rows))
            teleport_png(tele, plan, d / "teleport.png")
            write_tensorboard(tele, logdir)
            result.update(teleport=tele, teleport_table=rows)
            report += [f"\n## {name}: teleport once at epoch {plan.teleport_epoch} (paired differences to no "
                       f"teleport, t 95% CI over {plan.teleport_seeds} seeds)\n\n", teleport_markdown(rows)]
        atomic_write_text(d / "results.json", json.dumps(_finite_json(result)))
        report.append(f"\n{name}: {time.perf_counter() - t0:.0f} s\n")
    report.append(f"\ntotal: {time.perf_counter() - start:.0f} s\n")
    text = "".join(report)
    atomic_write_text(out / "generalization.md", text)
    print(text, end="")
    print(f"wrote {out}/generalization.md and per-dataset tables, figures and results.json under {out}/; "
          f"TensorBoard: tensorboard --logdir {logdir}")
    return 0
