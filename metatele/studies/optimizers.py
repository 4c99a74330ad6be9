"""Standard torch optimizers with and without teleportation, on real data (`metatele optimizers`).

The protocol of Zhao et al. (ICLR 2024, Fig. 5; docs/teleportation.md §7), run through the user-facing API
(`metatele.teleport.sequential.Teleporter`) on an `nn.Sequential`:
- a bias-free MLP d0-16-10-10 with LeakyReLU(0.1) (784-16-10-10 on MNIST), PyTorch's default nn.Linear
  initialization under torch.manual_seed((r + 1)·54321) for run r, cross-entropy, mini-batches of 20 in an
  order reshuffled every epoch by a generator with the same seed (so every arm of a seed sees the same
  batches), the last partial batch dropped;
- SGD, SGD + momentum 0.9, AdaGrad, RMSProp and Adam; each optimizer's lr is tuned without teleport on the
  validation split over a log grid of multiples of the paper's lr (criterion: mean validation loss at the
  last epoch over `tune_seeds` seeds disjoint from the reported ones), then used by every arm;
- the paper's schedule: 8 teleports, on the first 8 mini-batches of epoch 2 (SGD, AdaGrad) or epoch 0
  (momentum, RMSProp, Adam), each 10 normalized gradient-ascent steps on ‖∇L‖² (‖T‖ ≤ 0.3 per layer).
  The paper ascends on 200 samples with an approximate action; the exact action allows at most 16 samples
  when both hidden layers move (their inputs are 784 and 16 wide), so the arms are:
  "none"; "teleport" (both layers, 16 samples, optimizer state kept); "teleport-reset" (the same, state
  reset); "random" (both layers, 16 samples, a random T of the same per-layer norm as the "teleport" arm of
  the seed had on average, or 0.3 if none of its teleports was applied: the control); "teleport-layer1"
  and "teleport-layer1-reset" (first hidden layer only, whose input is 784 wide, on 200 samples: the
  paper's batch size, exactly; on digits, 32 = 64 / 2; state kept or reset).
Metrics per epoch (epoch 0 = before training): the loss on the whole training split, the validation loss
and accuracy. Time is training time only (teleports included, evaluation excluded) on one thread, measured
as the process's CPU seconds on --device cpu: on an otherwise idle core that equals wall-clock, and unlike
wall-clock it is not inflated by other jobs on a shared machine. Wall-clock seconds are recorded beside it
(runs.csv), and on CUDA they are the clock.
"""
from __future__ import annotations

import math
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from metatele import datasets
from metatele.checkpoints import atomic_write_csv, atomic_write_text
from metatele.errors import ConfigError
from metatele.evaluation.stats import fmt, mean_ci
from metatele.plotting import pyplot, save_png
from metatele.teleport.sequential import Teleporter, inspect_mlp

__all__ = ["OptimizerSpec", "Arm", "OPTIMIZERS", "ARMS", "QUICK", "StudyConfig", "RunResult", "StudyResult",
           "make_mlp", "train_run", "tune_lr", "run_study", "write_outputs", "main"]

PAPER_SEED = 54321
TUNE_FIRST_SEED = 10**6  # tuning seeds are 10⁶, 10⁶+1, …: disjoint from the reported (r+1)·54321
PAPER_TELEPORT_BATCH = 200


@dataclass(frozen=True)
class OptimizerSpec:
    """How to build one optimizer at a given lr, the paper's lr for it and its teleport epoch."""

    name: str
    make: Callable[[Iterable[nn.Parameter], float], torch.optim.Optimizer]
    paper_lr: float
    teleport_epoch: int


OPTIMIZERS: dict[str, OptimizerSpec] = {s.name: s for s in (
    OptimizerSpec("sgd", lambda p, lr: torch.optim.SGD(p, lr=lr), 1e-2, 2),
    OptimizerSpec("momentum", lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9), 1e-3, 0),
    OptimizerSpec("adagrad", lambda p, lr: torch.optim.Adagrad(p, lr=lr), 1e-2, 2),
    OptimizerSpec("rmsprop", lambda p, lr: torch.optim.RMSprop(p, lr=lr), 1e-4, 0),
    OptimizerSpec("adam", lambda p, lr: torch.optim.Adam(p, lr=lr), 1e-4, 0),
)}


@dataclass(frozen=True)
class Arm:
    """One way to train: no teleport (method None), or `Teleporter` settings. paper_batch: teleport on
    the paper's 200 samples, or half the exact limit if that is smaller (images rarely span every input
    dimension: digits' 8×8 images have 3 always-blank pixels and rank 61), instead of the exact limit."""

    name: str
    method: str | None = None
    state: str = "keep"
    layers: int | None = None
    paper_batch: bool = False


ARMS: dict[str, Arm] = {a.name: a for a in (
    Arm("none"),
    Arm("teleport", "ascent"),
    Arm("teleport-reset", "ascent", state="reset"),
    Arm("random", "random"),
    Arm("teleport-layer1", "ascent", layers=1, paper_batch=True),
    Arm("teleport-layer1-reset", "ascent", state="reset", layers=1, paper_batch=True),
)}


@dataclass(frozen=True)
class StudyConfig:
    """What `run_study` runs. lr_grid: multiples of each optimizer's paper lr."""

    dataset: str = "mnist5k"
    optimizers: tuple[str, ...] = tuple(OPTIMIZERS)
    arms: tuple[str, ...] = tuple(ARMS)
    epochs: int = 40
    seeds: int = 5
    batch_size: int = 20
    hidden: tuple[int, ...] = (16, 10)
    teleports: int = 8
    ascent_steps: int = 10
    lr_grid: tuple[float, ...] = (0.1, 10 ** -0.5, 1.0, 10 ** 0.5, 10.0)
    tune_seeds: int = 1
    tune_epochs: int | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        if not self.optimizers:
            raise ConfigError(f"no optimizer given; choose from: {', '.join(OPTIMIZERS)}")
        bad = [o for o in self.optimizers if o not in OPTIMIZERS] + [a for a in self.arms if a not in ARMS]
        if bad:
            raise ConfigError(f"unknown optimizer or arm {bad}; optimizers: {', '.join(OPTIMIZERS)}; "
                              f"arms: {', '.join(ARMS)}")
        if "none" not in self.arms:
            raise ConfigError("the arms must include 'none' (the baseline every difference is taken against)")
        if "random" in self.arms and "teleport" not in self.arms:
            raise ConfigError("the 'random' arm takes its magnitude from the 'teleport' arm; include both")


QUICK = {"epochs": 3, "seeds": 2, "teleports": 2, "lr_grid": (1.0, 10 ** 0.5), "tune_epochs": 1,
         "arms": ("none", "teleport", "teleport-layer1")}


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


def make_mlp(widths: Sequence[int], slope: float = 0.1) -> nn.Sequential:
    """Bias-free Linear, (LeakyReLU, Linear)* with the given widths (d0, hidden…, classes)."""
    mods: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        if i:
            mods.append(nn.LeakyReLU(slope))
        mods.append(nn.Linear(a, b, bias=False))
    return nn.Sequential(*mods)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock_for(device: torch.device) -> Callable[[], float]:
    """The study's clock: process CPU seconds on the CPU, wall-clock on an accelerator."""
    return time.process_time if device.type == "cpu" else time.perf_counter


def clock_name(device: str) -> str:
    return "CPU" if torch.device(device).type == "cpu" else "wall-clock"


@torch.no_grad()
def _evaluate(model: nn.Sequential, data: datasets.Dataset) -> tuple[float, float, float]:
    train = float(F.cross_entropy(model(data.X_train), data.y_train))
    out = model(data.X_val)
    return train, float(F.cross_entropy(out, data.y_val)), float((out.argmax(1) == data.y_val).double().mean())


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
        runs = [train_run(data, spec, lr, ARMS["none"], TUNE_FIRST_SEED + r, tcfg) for r in range(cfg.tune_seeds)]
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


def _seeds(n: int) -> list[int]:
    return [(r + 1) * PAPER_SEED for r in range(n)]


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
        for i, seed in enumerate(_seeds(cfg.seeds)):  # arms interleaved per seed: load changes hit all alike
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


# ---------------------------------------------------------------- statistics

METRICS = ("train_loss", "val_loss", "val_acc")


def _stack(runs: list[RunResult], metric: str) -> torch.Tensor:
    return torch.from_numpy(np.stack([getattr(r, metric) for r in runs]))


def _at_times(runs: list[RunResult], metric: str, times: np.ndarray) -> torch.Tensor:
    """Each run's metric at the given times (seeds × points), linearly interpolated on its (seconds, metric)
    curve and held after its end; NaN after a divergence. times: (points,) or (seeds, points)."""
    t = np.broadcast_to(times, (len(runs), times.shape[-1]))
    out = []
    for r, tt in zip(runs, t):
        ok = np.isfinite(r.seconds) & np.isfinite(getattr(r, metric))
        out.append(np.interp(tt, r.seconds[ok], getattr(r, metric)[ok], right=np.nan if r.diverged else None)
                   if ok.sum() > 1 else np.full_like(tt, np.nan))
    return torch.from_numpy(np.stack(out))


def report_epochs(epochs: int) -> list[int]:
    """The epochs the tables show: 1, 3 (the first after the epoch-2 teleports), a quarter of the run, the last."""
    return sorted({e for e in (1, 3, round(epochs / 4), epochs) if 1 <= e <= epochs})


def curve_rows(res: StudyResult) -> list[dict[str, Any]]:
    """results.csv: mean and 95% CI over seeds per (optimizer, arm, epoch)."""
    rows = []
    for (opt, arm), runs in res.runs.items():
        stats = {m: mean_ci(_stack(runs, m)) for m in (*METRICS, "seconds")}
        for e in range(res.cfg.epochs + 1):
            row: dict[str, Any] = {"dataset": res.cfg.dataset, "optimizer": opt, "lr": res.lrs[opt], "arm": arm,
                                   "epoch": e}
            for m, st in stats.items():
                row.update({f"{m}_mean": float(st["mean"][e]), f"{m}_ci95_low": float(st["low"][e]),
                            f"{m}_ci95_high": float(st["high"][e])})
            row["n_seeds"], row["n_diverged"] = int(st["n"][e]), int(stats["train_loss"]["n_nonfinite"][e])
            rows.append(row)
    return rows


def difference_rows(res: StudyResult) -> list[dict[str, Any]]:
    """Paired (same seed) differences arm − none, at equal epochs and at equal wall-clock (the arm's value
    at the seconds the seed's 'none' run had reached at that epoch), with 95% CIs."""
    rows = []
    for (opt, arm), runs in res.runs.items():
        if arm == "none":
            continue
        base = res.runs[opt, "none"]
        t_base = np.stack([r.seconds for r in base])
        for e in report_epochs(res.cfg.epochs):
            for m in METRICS:
                b = _stack(base, m)[:, e]
                for basis, v in (("epoch", _stack(runs, m)[:, e]), ("time", _at_times(runs, m, t_base[:, e:e + 1])[:, 0])):
                    st = mean_ci(v - b)
                    rows.append({"optimizer": opt, "arm": arm, "epoch": e, "basis": basis, "metric": m,
                                 "diff_mean": float(st["mean"]), "diff_ci95_low": float(st["low"]),
                                 "diff_ci95_high": float(st["high"]), "n_seeds": int(st["n"])})
    return rows


def seed_rows(res: StudyResult) -> list[dict[str, Any]]:
    """runs.csv: every run's curves, one row per (optimizer, arm, seed, epoch)."""
    return [{"optimizer": opt, "arm": arm, "seed": seed, "epoch": e, "seconds": r.seconds[e],
             "wall_seconds": r.wall_seconds[e], "train_loss": r.train_loss[e], "val_loss": r.val_loss[e],
             "val_acc": r.val_acc[e]}
            for (opt, arm), runs in res.runs.items() for seed, r in zip(_seeds(res.cfg.seeds), runs)
            for e in range(res.cfg.epochs + 1)]


def teleport_log_rows(res: StudyResult) -> list[dict[str, Any]]:
    """teleport_log.csv: every teleport of every run."""
    return [{"optimizer": opt, "arm": arm, "seed": seed, "teleport": i, "applied": t.applied, "n_samples": t.n_samples,
             "magnitude": sum(m * m for m in t.magnitude) ** 0.5, "halvings": t.halvings,
             "loss_before": t.loss_before, "loss_after": t.loss_after, "grad_norm_sq_before": t.grad_norm_sq_before,
             "grad_norm_sq_after": t.grad_norm_sq_after, "wall_seconds": t.seconds}
            for (opt, arm), runs in res.runs.items() for seed, r in zip(_seeds(res.cfg.seeds), runs)
            for i, t in enumerate(r.teleports)]


def teleport_rows(res: StudyResult) -> list[dict[str, Any]]:
    """Per (optimizer, arm) with teleports: what the teleports did and what they cost."""
    rows = []
    for (opt, arm), runs in res.runs.items():
        tele = [t for r in runs for t in r.teleports]
        if not tele:
            continue
        applied = [t for t in tele if t.applied]
        total = np.array([r.seconds[np.isfinite(r.seconds)][-1] for r in runs])
        spent = np.array([r.teleport_seconds for r in runs])
        rows.append({
            "optimizer": opt, "arm": arm, "teleports": len(tele), "applied": len(applied),
            "n_samples": tele[0].n_samples,
            "magnitude_mean": float(np.mean([sum(m ** 2 for m in t.magnitude) ** 0.5 for t in applied])) if applied else 0.0,
            "grad_norm_sq_gain_median": float(np.median([t.gain for t in applied])) if applied else 1.0,
            "drift_max": max(t.drift for t in tele),
            "ms_per_teleport": 1e3 * float(spent.sum()) / len(tele),
            # share of the training time, over the runs that trained to the end
            "overhead_pct": 100.0 * float(np.mean([sp / tt for sp, tt, r in zip(spent, total, runs) if not r.diverged]))
            if not all(r.diverged for r in runs) else math.nan,
        })
    return rows


# ---------------------------------------------------------------- outputs

def _ci(mean: float, lo: float, hi: float, digits: str = ".3g") -> str:
    if not math.isfinite(mean):
        return "diverged"
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{mean:{digits}}"
    return f"{mean:{digits}} [{lo:{digits}}, {hi:{digits}}]"


def markdown(res: StudyResult, curves: list[dict[str, Any]], diffs: list[dict[str, Any]],
             tele: list[dict[str, Any]]) -> str:
    cfg, E = res.cfg, res.cfg.epochs
    d = datasets.load(cfg.dataset)
    widths = "-".join(str(w) for w in (d.n_features, *cfg.hidden, d.n_classes))
    lines = [f"# Optimizers with and without teleport: {cfg.dataset}", "",
             f"Bias-free MLP {widths}, LeakyReLU(0.1), cross-entropy, mini-batch {cfg.batch_size}, {E} epochs, "
             f"{cfg.seeds} seeds ((r+1)·54321), train {d.X_train.shape[0]} / validation {d.X_val.shape[0]} samples. "
             f"Means with 95% Student-t CIs over seeds; differences are paired by seed. Training loss: whole "
             f"training split at the end of the epoch. Time: training only (teleports included, evaluation "
             f"excluded), {torch.get_num_threads()} thread(s), device {cfg.device}, in {clock_name(cfg.device)} "
             f"seconds (runs.csv has wall-clock too). Study wall time {res.seconds:.0f} s.", "",
             "## Learning rates (tuned without teleport on the validation split)", "",
             f"Grid: paper lr × {', '.join(f'{m:.3g}' for m in cfg.lr_grid)}; criterion: mean validation loss at "
             f"epoch {cfg.tune_epochs or E} over {cfg.tune_seeds} tuning seed(s) (10⁶, 10⁶+1, …).", "",
             "| optimizer | paper lr | " + " | ".join(f"×{m:.3g}" for m in cfg.lr_grid) + " | chosen lr |",
             "|---|---|" + "---|" * len(cfg.lr_grid) + "---|"]
    for opt in cfg.optimizers:
        rs = [r for r in res.tuning if r["optimizer"] == opt]
        cells = [("**" if r["chosen"] else "") + ("diverged" if not math.isfinite(r["val_loss"]) else f"{r['val_loss']:.3f}")
                 + ("**" if r["chosen"] else "") for r in rs]
        lines.append(f"| {opt} | {OPTIMIZERS[opt].paper_lr:g} | " + " | ".join(cells) + f" | {res.lrs[opt]:.3g} |")
    lines += ["", f"## At the last epoch ({E})", "",
              "Over the seeds that did not diverge (a run diverges when its training loss is not finite).", "",
              "| optimizer | arm | train loss | validation loss | validation accuracy | train time (s) | diverged |",
              "|---|---|---|---|---|---|---|"]
    last = {(r["optimizer"], r["arm"]): r for r in curves if r["epoch"] == E}
    for (opt, arm), runs in res.runs.items():
        r = last[opt, arm]
        cells = [_ci(r[f"{m}_mean"], r[f"{m}_ci95_low"], r[f"{m}_ci95_high"], ".4f" if m == "val_acc" else ".3g")
                 for m in METRICS]
        t = mean_ci(torch.tensor([x.seconds[np.isfinite(x.seconds)][-1] for x in runs]))
        cells.append(_ci(float(t["mean"]), float(t["low"]), float(t["high"])))
        lines.append(f"| {opt} | {arm} | " + " | ".join(cells) + f" | {sum(x.diverged for x in runs)}/{len(runs)} |")
    lines += ["", "## Teleport − none (paired by seed; negative loss / positive accuracy = teleport better)", "",
              "At equal epochs, and at equal time: the arm's value (interpolated in time) at the time the seed's "
              "'none' run had taken to reach that epoch. SGD and AdaGrad teleport at the start of epoch 2, so "
              "their epoch-1 rows are before any teleport. n: seeds where both runs are finite.", "",
              "| optimizer | arm | epoch | basis | Δ train loss | Δ validation loss | Δ validation accuracy | n |",
              "|---|---|---|---|---|---|---|---|"]
    by = {(r["optimizer"], r["arm"], r["epoch"], r["basis"], r["metric"]): r for r in diffs}
    for (opt, arm) in res.runs:
        if arm == "none":
            continue
        for e in report_epochs(E):
            for basis in ("epoch", "time"):
                cells = []
                for m in METRICS:
                    r = by[opt, arm, e, basis, m]
                    cells.append(_ci(r["diff_mean"], r["diff_ci95_low"], r["diff_ci95_high"],
                                     "+.3g" if m != "val_acc" else "+.4f"))
                lines.append(f"| {opt} | {arm} | {e} | {basis} | " + " | ".join(cells) + f" | {r['n_seeds']} |")
    lines += ["", "## What the teleports did", "",
              "Per teleport on its own batch: ‖T‖ (Frobenius over layers), the median gain of ‖∇L‖², the largest "
              "relative change of the batch loss (tolerance 1e-4), the time per teleport, and its share of the "
              "training time (over the runs that did not diverge).", "",
              "| optimizer | arm | teleports (applied) | samples | mean ‖T‖ | median ‖∇L‖² gain | max drift | "
              "ms / teleport | overhead |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in tele:
        over = f"{r['overhead_pct']:.1f}%" if math.isfinite(r["overhead_pct"]) else "— (all diverged)"
        lines.append(f"| {r['optimizer']} | {r['arm']} | {r['teleports']} ({r['applied']}) | {r['n_samples']} | "
                     f"{r['magnitude_mean']:.3f} | {fmt(r['grad_norm_sq_gain_median'])} | {r['drift_max']:.1e} | "
                     f"{r['ms_per_teleport']:.1f} | {over} |")
    return "\n".join(lines) + "\n"


def _mean_band(v: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    st = mean_ci(v)
    return st["mean"], st["low"], st["high"]


def plot(res: StudyResult, path: Path, basis: str) -> None:
    """One row per optimizer, columns train loss / validation loss / validation accuracy, one line per arm
    (mean over seeds, 95% CI band), against epoch or seconds."""
    plt = pyplot()
    opts = list(res.cfg.optimizers)
    fig, axes = plt.subplots(len(opts), 3, figsize=(13, 2.6 * len(opts) + 0.6), squeeze=False)
    for i, opt in enumerate(opts):
        arms = [a for (o, a) in res.runs if o == opt]
        if basis == "time":  # up to the median time of the 'none' runs; arms that all diverged are left out
            arms = [a for a in arms if not all(r.diverged for r in res.runs[opt, a])]
            x = np.linspace(0.0, float(np.median([r.seconds[-1] for r in res.runs[opt, "none"]])), 200)
        for j, m in enumerate(METRICS):
            ax, lows = axes[i, j], []
            for arm in arms:
                runs, colour = res.runs[opt, arm], f"C{list(ARMS).index(arm)}"  # one colour per arm everywhere
                if basis == "time":
                    mean, lo, hi = _mean_band(_at_times(runs, m, x))
                    xs = x
                else:
                    mean, lo, hi = _mean_band(_stack(runs, m))
                    xs = np.arange(res.cfg.epochs + 1)
                ax.plot(xs, mean, color=colour, label=arm, lw=1.2)
                ax.fill_between(xs, lo, hi, color=colour, alpha=0.15, lw=0)
                if m != "val_acc" and np.isfinite(mean).any():
                    lows.append(np.nanmin(mean))
            if m != "val_acc":  # log scale, clipped at 3× the initial loss so that blow-ups do not hide the rest
                ax.set_yscale("log")
                top = 3 * float(np.nanmean(_stack(res.runs[opt, "none"], m)[:, 0].numpy()))
                ax.set_ylim(0.7 * min(min(lows), top / 10), top)
            else:
                ax.set_ylim(0.0, 1.0)
            ax.set_title(f"{opt} (lr {res.lrs[opt]:.3g}): {m.replace('_', ' ')}", fontsize=9)
            ax.grid(alpha=0.3)
            if i == len(opts) - 1:
                ax.set_xlabel("epoch" if basis == "epoch" else f"training time (s, {clock_name(res.cfg.device)})")
        axes[i, 0].legend(fontsize=7)
    fig.suptitle(f"{res.cfg.dataset}: mean over {res.cfg.seeds} seeds, 95% CI bands; losses clipped at 3× the "
                 "initial loss", fontsize=10)
    fig.tight_layout()
    save_png(fig, path, dpi=90)


def write_tensorboard(res: StudyResult, curves: list[dict[str, Any]], logdir: Path) -> None:
    """One run per (optimizer, arm): seed means and CI bounds per epoch (`epoch/*`, walltime = the mean
    training seconds) and against training milliseconds (`time_ms/*`)."""
    from torch.utils.tensorboard import SummaryWriter

    base = time.time()
    for (opt, arm) in res.runs:
        with SummaryWriter(str(logdir / f"{opt}-{arm}")) as w:
            for r in (r for r in curves if r["optimizer"] == opt and r["arm"] == arm):
                sec = r["seconds_mean"]
                for m in METRICS:
                    for suffix in ("mean", "ci95_low", "ci95_high"):
                        v = r[f"{m}_{suffix}"]
                        if math.isfinite(v):
                            w.add_scalar(f"epoch/{m}_{suffix}", v, r["epoch"], walltime=base + sec)
                            w.add_scalar(f"time_ms/{m}_{suffix}", v, round(1e3 * sec), walltime=base + sec)
    with SummaryWriter(str(logdir)) as w:
        w.add_custom_scalars({f"optimizers ({res.cfg.dataset})": {
            f"{m} (mean, 95% CI)": ["Margin", [f"epoch/{m}_mean", f"epoch/{m}_ci95_low", f"epoch/{m}_ci95_high"]]
            for m in METRICS}})


OUTPUT_FILES = ("summary.md", "results.csv", "differences.csv", "teleports.csv", "tuning.csv", "runs.csv",
                "teleport_log.csv", "curves_epoch.png", "curves_time.png")


def _check_outputs(cfg: StudyConfig, out: Path, logdir: Path | None, overwrite: bool) -> list[Path]:
    """Refuse to overwrite earlier results unless asked; returns the TensorBoard run directories to clear."""
    runs = [] if logdir is None else [logdir / f"{o}-{a}" for o in cfg.optimizers for a in cfg.arms]
    existing = [out / f for f in OUTPUT_FILES if (out / f).exists()] + [r for r in runs if r.exists()]
    if existing and not overwrite:
        raise ConfigError(f"{existing[0]} already exists (and {len(existing) - 1} more); pass --overwrite to "
                          "replace earlier results, or choose another --out/--logdir")
    return [r for r in runs if r.exists()]


def write_outputs(res: StudyResult, out: Path, logdir: Path | None) -> str:
    """Write every output file; returns the Markdown summary."""
    curves, diffs, tele = curve_rows(res), difference_rows(res), teleport_rows(res)
    md = markdown(res, curves, diffs, tele)
    atomic_write_csv(out / "results.csv", curves)
    atomic_write_csv(out / "differences.csv", diffs)
    atomic_write_csv(out / "teleports.csv", tele)
    atomic_write_csv(out / "tuning.csv", res.tuning)
    atomic_write_csv(out / "runs.csv", seed_rows(res))
    atomic_write_csv(out / "teleport_log.csv", teleport_log_rows(res))
    plot(res, out / "curves_epoch.png", "epoch")
    plot(res, out / "curves_time.png", "time")
    if logdir is not None:
        write_tensorboard(res, curves, logdir)
    atomic_write_text(out / "summary.md", md)
    return md


def main(*, quick: bool, out: Path, logdir: Path | None, overwrite: bool = False, progress: bool = True,
         **overrides: Any) -> int:
    """`metatele optimizers`: run the study and write OUTPUT_FILES in `out` (summary.md, the CSV tables:
    per-epoch statistics, paired differences, teleport summary, lr tuning, every run's curves, every teleport;
    the two figures) and TensorBoard runs in `logdir`.
    overrides: StudyConfig fields (None values are ignored); --quick starts from QUICK."""
    kw = {**(QUICK if quick else {}), **{k: v for k, v in overrides.items() if v is not None}}
    cfg = StudyConfig(**kw)
    stale = _check_outputs(cfg, out, logdir, overwrite)
    datasets.load(cfg.dataset)  # fail early, with the install hint, before any training
    res = run_study(cfg, progress)
    for r in stale:
        shutil.rmtree(r)
    md = write_outputs(res, out, logdir)
    print(md, end="")
    print(f"wrote {out}/{{{','.join(OUTPUT_FILES)}}}" + (f"; TensorBoard: tensorboard --logdir {logdir}" if logdir else ""))
    return 0
