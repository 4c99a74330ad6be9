"""The optimizers study's report: the Markdown summary, the figures, TensorBoard runs and the output files
(written all or none), and `main` (`metatele optimizers`)."""
from __future__ import annotations

import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metatele import datasets
from metatele.errors import ConfigError
from metatele.evaluation.stats import mean_ci
from metatele.io import csv_text, write_files
from metatele.reporting import ci, fmt
from metatele.reporting.plotting import png_bytes, pyplot
from metatele.reporting.tensorboard import Point, write_run
from metatele.studies.optimizers.plan import ARMS, OPTIMIZERS, QUICK, StudyConfig
from metatele.studies.optimizers.rows import (METRICS, at_times, curve_rows, difference_rows, report_epochs,
                                              seed_rows, stack, teleport_log_rows, teleport_rows)
from metatele.studies.optimizers.run import StudyResult, clock_name, run_study
from metatele.tasks.seeds import PAPER_SEED_STRIDE

__all__ = ["OUTPUT_FILES", "markdown", "plot", "write_tensorboard", "write_outputs", "main"]

DIVERGED = "diverged"  # a mean over seeds when every seed diverged


def markdown(res: StudyResult, curves: list[dict[str, Any]], diffs: list[dict[str, Any]],
             tele: list[dict[str, Any]]) -> str:
    cfg, E = res.cfg, res.cfg.epochs
    d = datasets.load(cfg.dataset)
    widths = "-".join(str(w) for w in (d.n_features, *cfg.hidden, d.n_classes))
    lines = [f"# Optimizers with and without teleport: {cfg.dataset}", "",
             f"Bias-free MLP {widths}, LeakyReLU(0.1), cross-entropy, mini-batch {cfg.batch_size}, {E} epochs, "
             f"{cfg.seeds} seeds ((r+1)·{PAPER_SEED_STRIDE}), train {d.X_train.shape[0]} / validation {d.X_val.shape[0]} samples. "
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
        cells = [ci(r[f"{m}_mean"], r[f"{m}_ci95_low"], r[f"{m}_ci95_high"], ".4f" if m == "val_acc" else ".3g",
                    DIVERGED) for m in METRICS]
        t = mean_ci(torch.tensor([x.seconds[np.isfinite(x.seconds)][-1] for x in runs]))
        cells.append(ci(float(t["mean"]), float(t["low"]), float(t["high"]), undefined=DIVERGED))
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
                    cells.append(ci(r["diff_mean"], r["diff_ci95_low"], r["diff_ci95_high"],
                                    "+.3g" if m != "val_acc" else "+.4f", DIVERGED))
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
                     f"{r['magnitude_mean']:.3f} | {fmt(r['grad_norm_sq_gain_median'])} | {fmt(r['drift_max'], '.1e')} | "
                     f"{r['ms_per_teleport']:.1f} | {over} |")
    return "\n".join(lines) + "\n"


def _mean_band(v: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    st = mean_ci(v)
    return st["mean"], st["low"], st["high"]


def plot(res: StudyResult, basis: str) -> bytes:
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
                    mean, lo, hi = _mean_band(at_times(runs, m, x))
                    xs = x
                else:
                    mean, lo, hi = _mean_band(stack(runs, m))
                    xs = np.arange(res.cfg.epochs + 1)
                ax.plot(xs, mean, color=colour, label=arm, lw=1.2)
                ax.fill_between(xs, lo, hi, color=colour, alpha=0.15, lw=0)
                if m != "val_acc" and np.isfinite(mean).any():
                    lows.append(np.nanmin(mean))
            if m != "val_acc":  # log scale, clipped at 3× the initial loss so that blow-ups do not hide the rest
                ax.set_yscale("log")
                top = 3 * float(np.nanmean(stack(res.runs[opt, "none"], m)[:, 0].numpy()))
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
    return png_bytes(fig, dpi=90)


def write_tensorboard(res: StudyResult, curves: list[dict[str, Any]], logdir: Path) -> None:
    """One run per (optimizer, arm): seed means and CI bounds per epoch (`epoch/*`, walltime = the mean
    training seconds) and against training milliseconds (`time_ms/*`); the layout in `logdir` itself."""
    base = time.time()
    for (opt, arm) in res.runs:
        points = []
        for r in (r for r in curves if r["optimizer"] == opt and r["arm"] == arm):
            sec = r["seconds_mean"]
            for m in METRICS:
                for suffix in ("mean", "ci95_low", "ci95_high"):
                    v = r[f"{m}_{suffix}"]
                    points += [Point(f"epoch/{m}_{suffix}", v, r["epoch"], base + sec),
                               Point(f"time_ms/{m}_{suffix}", v, round(1e3 * sec) if math.isfinite(sec) else 0,
                                     base + sec)]
        write_run(logdir / f"{opt}-{arm}", points)
    write_run(logdir, [], layout={f"optimizers ({res.cfg.dataset})": {
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
    tables = (curves, diffs, tele, res.tuning, seed_rows(res), teleport_log_rows(res))
    write_files(out, {"summary.md": md, **{f: csv_text(t) for f, t in zip(OUTPUT_FILES[1:7], tables)},
                      "curves_epoch.png": plot(res, "epoch"), "curves_time.png": plot(res, "time")})
    if logdir is not None:
        write_tensorboard(res, curves, logdir)
    return md


def main(*, quick: bool, out: Path, logdir: Path | None, overwrite: bool = False, progress: bool = True,
         **overrides: Any) -> int:
    """`metatele optimizers`: plan → run → rows. Write OUTPUT_FILES in `out`, all or none (summary.md, the CSV
    tables: per-epoch statistics, paired differences, teleport summary, lr tuning, every run's curves, every
    teleport; the two figures) and TensorBoard runs in `logdir`.
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
