"""Part (b), teleport: train to mid-run, teleport once per group and variant from the same weights, train on,
and compare with no teleport (run → rows)."""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from metatele.evaluation.stats import t_interval
from metatele.nn import inspect_mlp
from metatele.studies.generalization.plan import GROUPS, MEASURE_BATCH, VARIANTS, Plan
from metatele.studies.generalization.run import log, network, setup, split_metrics, train
from metatele.tasks.seeds import study_seeds
from metatele.teleport.measures import PAPER_RADII, curvature, sharpness
from metatele.teleport.sequential import random_teleport_
from metatele.teleport.targets import teleport_to_target_

__all__ = ["teleport_study", "teleport_table"]

EVAL_SEED = 4  # direction draws of the probe measures (shared by all runs)


def _probe_measures(model: nn.Sequential, X: torch.Tensor, y: torch.Tensor, plan: Plan) -> tuple[float, float]:
    """φ and ψ on the probe batch, with twice the correlation's sharpness directions and other draws."""
    m64 = copy.deepcopy(model).double()
    with torch.no_grad():
        phi = sharpness(m64, F.cross_entropy, [(X, y)], PAPER_RADII, 2 * plan.sharp_dirs, EVAL_SEED)
        psi = curvature(m64, X, plan.curv_dirs, EVAL_SEED)
    return float(phi), float(psi)


def teleport_study(dataset: str, plan: Plan, device: str, seed_offset: int = 0, progress: bool = True
                   ) -> dict[str, Any]:
    """Teleport once mid-training, every group and variant from the same weights; returns the per-teleport
    records and the per-epoch curves (val_loss, val_acc, train_loss: (arms, seeds, epochs) nested lists, arm 0
    being no teleport, then one per (group, variant) of GROUPS × VARIANTS[1:])."""
    seeds = study_seeds(plan.teleport_seeds, seed_offset)
    arms = [("none", "none"), *[(g, v) for g in GROUPS for v in VARIANTS[1:]]]
    S, V = len(seeds), len(arms)
    data, task, spe = setup(dataset, seeds, device)
    act = task.activation
    Xtr, ytr = data.X_train.to(device), data.y_train.to(device)
    Xva, yva = data.X_val.to(device), data.y_val.to(device)
    curves = {k: np.full((V, S, plan.epochs), np.nan) for k in ("val_loss", "val_acc", "train_loss")}

    def record(epoch: int, weights: list[torch.Tensor]) -> None:
        vl, va = split_metrics(weights, Xva, yva, act)
        tl, _ = split_metrics(weights, Xtr, ytr, act)
        for key, val in (("val_loss", vl), ("val_acc", va), ("train_loss", tl)):
            curves[key][:, :, epoch] = val.cpu().numpy().reshape(-1, S)  # before the teleport: one copy for all

    t0 = time.perf_counter()
    W = train(task, task.init_weights(), range(plan.teleport_epoch), spe, record)
    Wv = [w.repeat(V, 1, 1) for w in W]  # network a·S + s is arm a of seed s
    before_tl, _ = split_metrics(W, Xtr, ytr, act)
    before_vl, _ = split_metrics(W, Xva, yva, act)
    records = []
    t1 = time.perf_counter()
    for s, seed in enumerate(seeds):
        idx = torch.randperm(Xtr.shape[0], generator=torch.Generator().manual_seed(seed + 1))[:MEASURE_BATCH].to(device)
        Xp, yp = Xtr[idx].double(), ytr[idx]
        Xt, yt = Xp[: plan.exact_batch], yp[: plan.exact_batch]
        phi0, psi0 = _probe_measures(network(W, s, W[0].dtype), Xp, yp, plan)
        for a, (group, name) in enumerate(arms[1:], 1):
            b = a * S + s
            model = network(Wv, b, Wv[0].dtype)
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
    after_tl, _ = split_metrics(Wv, Xtr, ytr, act)
    after_vl, _ = split_metrics(Wv, Xva, yva, act)
    for r, s in zip(records, [s for s in range(S) for _ in arms[1:]]):
        b = r["arm"] * S + s
        r["train_loss_jump"] = float(after_tl[b] - before_tl[s])
        r["val_loss_jump"] = float(after_vl[b] - before_vl[s])
    t2 = time.perf_counter()
    task_v = replace(task, order=task.order.repeat(V, 1), weights=Wv, seeds=task.seeds * V)
    train(task_v, Wv, range(plan.teleport_epoch, plan.epochs), spe, record)
    log(f"[{dataset}] teleport: {S} seeds × {V} arms, {plan.epochs} epochs; the {S * (V - 1)} teleports took "
         f"{t2 - t1:.0f} s, training {time.perf_counter() - t0 - (t2 - t1):.0f} s", progress)
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
