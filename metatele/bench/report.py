"""The suite's report: results.csv (per problem and method), summary.csv (IQM per split and method), results.md,
loss_curves.png, and TensorBoard runs (one directory per problem, one run per method, through
`metatele.evaluation.report.write_tensorboard`)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from metatele.bench.run import SEEDS, SPEEDUP_FACTOR, TUNE_SEEDS, ProblemRun
from metatele.bench.baselines import LR_GRID
from metatele.bench.scores import aggregate_rows, problem_rows
from metatele.evaluation.compare import Result
from metatele.evaluation.report import write_tensorboard
from metatele.io import csv_text, write_files
from metatele.reporting import ci
from metatele.reporting.plotting import png_bytes, pyplot
from metatele.step import Trajectory

__all__ = ["SPLITS", "NOTE", "tables", "markdown", "plot", "tensorboard", "report"]

SPLITS = ("heldout", "train")
NOTE = (f"Final loss: geometric mean [95% CI] over the report seeds. Baselines' lr tuned per problem on disjoint seeds "
        f"({TUNE_SEEDS} per lr) on the grid {LR_GRID[0]:g}…{LR_GRID[-1]:g} (×10^0.5). beats Adam: fraction of runs "
        "ending below tuned Adam on the same seed. speedup: tuned-Adam steps to reach the method's final loss / "
        f"horizon, median over runs (Adam runs {SPEEDUP_FACTOR}× the horizon; ≥{SPEEDUP_FACTOR} is censored). "
        "diverged: non-finite, or final loss above the initial loss.")


def _public(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if not k.startswith("_")}


def tables(runs: list[ProblemRun]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(per-problem rows, per-split aggregate rows)."""
    rows = [r for run in runs for r in problem_rows(run)]
    splits = [s for s in SPLITS if any(r["split"] == s for r in rows)]
    return rows, [a for s in splits for a in aggregate_rows(rows, s)]


def markdown(runs: list[ProblemRun], rows: list[dict[str, Any]], agg: list[dict[str, Any]]) -> str:
    lines = [NOTE, ""]
    for split in SPLITS:
        mine = [a for a in agg if a["split"] == split]
        if not mine:
            continue
        lines += [f"### Across {split} problems: IQM [95% stratified-bootstrap CI] over runs", "",
                  "| method | problems | runs | IQM speedup | median speedup | IQM log10(L_adam/L) | beats Adam | diverged |",
                  "|---|---|---|---|---|---|---|---|"]
        for a in mine:
            lines.append(f"| {a['method']} | {a['problems']} | {a['runs']} | {a['iqm_speedup']:.2f} "
                         f"[{a['iqm_speedup_low']:.2f}, {a['iqm_speedup_high']:.2f}] | {a['median_speedup']:.2f} | "
                         f"{a['iqm_log_ratio']:+.3f} [{a['iqm_log_ratio_low']:+.3f}, {a['iqm_log_ratio_high']:+.3f}] | "
                         f"{a['frac_beats_adam']:.0%} | {a['n_diverged']}/{a['runs']} |")
        lines.append("")
    for run in runs:
        p = run.problem
        lines += [f"### {p.name} ({p.split}; {p.describe()}; {p.steps} steps)", "",
                  "| method | lr | final loss | beats Adam | speedup | diverged | s/step |", "|---|---|---|---|---|---|---|"]
        for r in (r for r in rows if r["problem"] == p.name):
            lr = "" if math.isnan(r["lr"]) else f"{r['lr']:.3g}"
            cens = f" ({r['speedup_censored']} censored)" if r["speedup_censored"] else ""
            nf = f", {r['n_nonfinite']} non-finite" if r["n_nonfinite"] else ""
            lines.append(f"| {r['method']} | {lr} | {ci(r['geo_mean'], r['geo_ci95_low'], r['geo_ci95_high'])}{nf} | {r['frac_beats_adam']:.0%} | {r['speedup_median']:.2f}{cens} | "
                         f"{r['n_diverged']}/{r['n_runs']} | {r['sec_per_step']:.1e} |")
        lines.append("")
    return "\n".join(lines)


def _median_log10(loss: Any) -> np.ndarray:
    a = loss.double().numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.nanmedian(np.where(np.isfinite(a) & (a > 0), np.log10(np.abs(a) + 1e-300), np.nan), axis=1)


def plot(runs: list[ProblemRun]) -> bytes:
    """One panel per problem: median log10 loss over the report seeds against the step, every method."""
    plt = pyplot()
    cols = min(4, len(runs))
    nrows = -(-len(runs) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 3 * nrows), squeeze=False)
    for ax, run in zip(axes.flat, runs):
        T = run.problem.steps
        for name, traj in run.trajectories.items():
            ax.plot(_median_log10(traj.loss[: T + 1]), label=name, lw=1.2)
        ax.set_title(f"{run.problem.name} ({run.problem.split})", fontsize=8)
        ax.set_xlabel("step", fontsize=7)
        ax.set_ylabel("median log10 loss", fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(runs):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    fig.tight_layout()
    return png_bytes(fig)


def tensorboard(runs: list[ProblemRun], logdir: Path) -> None:
    for run in runs:
        T = run.problem.steps
        results = [Result(name, {"problem": run.problem.name, "split": run.problem.split,
                                 **({"lr": run.lrs[name]} if name in run.lrs else {})},
                          Trajectory(t.loss[: T + 1], t.grad_norm_sq[: T + 1], t.seconds[: T + 1]))
                   for name, t in run.trajectories.items()]
        write_tensorboard(results, logdir / run.problem.name)


def report(runs: list[ProblemRun], out: Path, logdir: Path | None = None) -> tuple[list[dict], list[dict]]:
    """Write every output (the four files all or none); returns (per-problem rows, aggregate rows)."""
    rows, agg = tables(runs)
    write_files(out, {"results.csv": csv_text([_public(r) for r in rows]), "summary.csv": csv_text(agg),
                      "results.md": markdown(runs, rows, agg), "loss_curves.png": plot(runs)})
    if logdir is not None:
        tensorboard(runs, logdir)
    return rows, agg
