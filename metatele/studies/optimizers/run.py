"""Running the optimizers study: one training run (`train_run`), lr tuning without teleport (`tune_lr`) and the
whole study (`run_study`). Time is the study's clock: process CPU seconds on the CPU, wall-clock on an
accelerator."""
from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from metatele import datasets
from metatele.studies.common import classification_metrics, make_mlp
from metatele.studies.optimizers.plan import ARMS, OPTIMIZERS, PAPER_TELEPORT_BATCH, Arm, OptimizerSpec, StudyConfig
from metatele.tasks.seeds import STUDY_TUNE_FIRST_SEED, study_seeds
from metatele.teleport.sequential import Teleporter, inspect_mlp

__all__ = ["RunResult", "StudyResult", "clock_for", "clock_name", "train_run", "tune_lr", "run_study"]


@dataclass
class RunResult:
    """One training run. Curves are (epochs + 1,) with epoch 0 before training; NaN after a divergence."""

    train_loss: np.ndarray
    val_loss: np.ndarray
    val_acc: np.ndarray
    seconds: np.ndarray  # cumulative training time on the study's clock (CPU seconds on cpu, wall on cuda)
    wall_seconds: np.ndarray
    teleport_seconds: float = 0.0  # of `seconds`, spent in teleports
    teleports: list[Any] = field(default_factory=list)  # TeleportResult of each teleport

    @property
    def diverged(self) -> bool:
        return not bool(np.isfinite(self.train_loss[-1]))

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock_for(device: torch.device) -> Callable[[], float]:
    """The study's clock: process CPU seconds on the CPU, wall-clock on an accelerator."""
    return time.process_time if device.type == "cpu" else time.perf_counter


def clock_name(device: str) -> str:
    return "CPU" if torch.device(device).type == "cpu" else "wall-clock"

def _evaluate(model: nn.Sequential, data: datasets.Dataset) -> tuple[float, float, float]:
    """(training loss, validation loss, validation accuracy) of `model` on the whole splits."""
    train, _ = classification_metrics(lambda X: model(X).T[None], data.X_train, data.y_train)
    val, acc = classification_metrics(lambda X: model(X).T[None], data.X_val, data.y_val)
    return float(train[0]), float(val[0]), float(acc[0])


def train_run(data: datasets.Dataset, spec: OptimizerSpec, lr: float, arm: Arm, seed: int, cfg: StudyConfig,
              magnitude: Sequence[float] | None = None) -> RunResult:
    """Train one model; `data` already on the device. magnitude: per-layer ‖T‖ for the random arm."""
    device = data.X_train.device
    torch.manual_seed(seed)
    model = make_mlp((data.n_features, *cfg.hidden, data.n_classes)).to(device)
    opt = spec.make(model.parameters(), lr)
    order = torch.Generator().manual_seed(seed)
    N, bs = data.X_train.shape[0], cfg.batch_size
    per_epoch = N // bs
    tele = None
    if arm.method is not None:
        limit = inspect_mlp(model).max_batch(arm.layers)
        tele = Teleporter(model, opt, F.cross_entropy, data.X_train, data.y_train,
                          at_epochs=[spec.teleport_epoch], steps_per_epoch=per_epoch, per_epoch=cfg.teleports,
                          n_samples=min(PAPER_TELEPORT_BATCH, limit // 2) if arm.paper_batch else limit,
                          layers=arm.layers, method=arm.method, ascent_steps=cfg.ascent_steps,
                          magnitude=0.3 if magnitude is None else list(magnitude), state=arm.state,
                          generator=torch.Generator().manual_seed(seed + 1))
    clock = clock_for(device)
    curves = [_evaluate(model, data)]
    seconds, wall, tele_s = [0.0], [0.0], 0.0
    for _ in range(cfg.epochs):
        perm = torch.randperm(N, generator=order).to(device)
        _sync(device)
        t0, w0 = clock(), time.perf_counter()
        for i in range(per_epoch):
            if tele is not None:
                c0 = clock()
                if tele.step() is not None:
                    tele_s += clock() - c0
            idx = perm[i * bs: (i + 1) * bs]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(data.X_train[idx]), data.y_train[idx]).backward()
            opt.step()
        _sync(device)
        seconds.append(seconds[-1] + clock() - t0)
        wall.append(wall[-1] + time.perf_counter() - w0)
        curves.append(_evaluate(model, data))
        if not math.isfinite(curves[-1][0]):  # diverged: no metric of this epoch or later is meaningful
            curves[-1] = (math.nan, math.nan, math.nan)
            break
    c = np.full((cfg.epochs + 1, 3), np.nan)
    c[: len(curves)] = np.array(curves)
    s, w = np.full(cfg.epochs + 1, np.nan), np.full(cfg.epochs + 1, np.nan)
    s[: len(seconds)], w[: len(wall)] = seconds, wall
    return RunResult(c[:, 0], c[:, 1], c[:, 2], s, w, tele_s, [r for _, r in tele.history] if tele else [])


def tune_lr(data: datasets.Dataset, spec: OptimizerSpec, cfg: StudyConfig,
            progress: Callable[[], None] = lambda: None) -> tuple[float, list[dict[str, Any]]]:
    """The lr of the grid with the lowest mean last-epoch validation loss (no teleport, tuning seeds);
    a grid point where any seed diverged scores +inf. Returns (lr, one row per grid point)."""
    tcfg = replace(cfg, epochs=cfg.tune_epochs or cfg.epochs)
    rows = []
    for mult in cfg.lr_grid:
        lr = spec.paper_lr * mult
        runs = [train_run(data, spec, lr, ARMS["none"], STUDY_TUNE_FIRST_SEED + r, tcfg) for r in range(cfg.tune_seeds)]
        for _ in runs:
            progress()
        vals = [r.val_loss[-1] for r in runs]
        score = float(np.mean(vals)) if all(math.isfinite(v) for v in vals) else math.inf
        rows.append({"optimizer": spec.name, "lr": lr, "lr_over_paper": mult, "val_loss": score,
                     "val_acc": float(np.mean([r.val_acc[-1] for r in runs])) if math.isfinite(score) else math.inf})
    best = min(rows, key=lambda r: r["val_loss"])
    for r in rows:
        r["chosen"] = r is best
    return best["lr"], rows

@dataclass
class StudyResult:
    cfg: StudyConfig
    lrs: dict[str, float]
    tuning: list[dict[str, Any]]
    runs: dict[tuple[str, str], list[RunResult]]  # (optimizer, arm) → one per seed
    seconds: float


def run_study(cfg: StudyConfig, progress: bool = True) -> StudyResult:
    """Tune each optimizer's lr, then train every (optimizer, arm) on every seed."""
    t_start = time.perf_counter()
    device = torch.device(cfg.device)
    d = datasets.load(cfg.dataset)
    data = datasets.Dataset(d.name, d.X_train.to(device), d.y_train.to(device), d.X_val.to(device),
                            d.y_val.to(device), d.n_classes)
    n_runs = len(cfg.optimizers) * (len(cfg.lr_grid) * cfg.tune_seeds + len(cfg.arms) * cfg.seeds)
    bar = tqdm(total=n_runs, desc="optimizers", disable=not progress, file=sys.stderr)
    lrs, tuning, runs = {}, [], {}
    for name in cfg.optimizers:
        spec = OPTIMIZERS[name]
        bar.set_postfix_str(f"{name}: tuning lr")
        lrs[name], rows = tune_lr(data, spec, cfg, lambda: bar.update())
        tuning += rows
        out: dict[str, list[RunResult]] = {a: [] for a in ARMS if a in cfg.arms}
        for i, seed in enumerate(study_seeds(cfg.seeds)):  # arms interleaved per seed: load changes hit all alike
            for arm_name in out:  # in ARMS order, so "teleport" runs before "random" needs its magnitude
                bar.set_postfix_str(f"{name}: {arm_name}")
                mag = None
                if arm_name == "random":
                    tele = [t for t in out["teleport"][i].teleports if t.applied]
                    mag = np.mean([t.magnitude for t in tele], axis=0) if tele else None
                out[arm_name].append(train_run(data, spec, lrs[name], ARMS[arm_name], seed, cfg, mag))
                bar.update()
        runs.update({(name, a): r for a, r in out.items()})
    bar.close()
    return StudyResult(cfg, lrs, tuning, runs, time.perf_counter() - t_start)
