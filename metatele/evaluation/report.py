"""The compare report: per-method rows (`rows`), written as CSV and Markdown tables with a PNG of the loss
curves (all three or none), and TensorBoard runs (one run per method, so the curves overlay). An undefined
statistic (no finite task, or one finite task for an interval) is an empty CSV cell and "—" or "n non-finite"
in Markdown."""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metatele.evaluation.compare import Result
from metatele.evaluation.stats import divergence, report_steps, steps_to_reach, summarize, summarize_steps
from metatele.io import csv_text, write_files
from metatele.reporting import UNDEFINED, ci, fmt
from metatele.reporting.plotting import png_bytes, pyplot
from metatele.reporting.tensorboard import Point, write_run

__all__ = ["REACH_FACTORS", "LAYOUT", "TABLE_NOTE", "TB_TAGS", "CSV_COLUMNS", "OUTPUT_FILES", "rows", "markdown",
           "tuning_note", "tables", "write_tensorboard", "plot", "report"]

REACH_FACTORS = (1e-1, 1e-2, 1e-3)
TB_TAGS = ("loss_mean", "log10_loss_mean", "log10_loss_median", "log10_loss_q10", "log10_loss_q90",
           "log10_grad_norm_sq")
CSV_COLUMNS = ("method", "step", "geo_mean", "geo_ci95_low", "geo_ci95_high", "loss_mean", "loss_ci95_low",
               "loss_ci95_high", "loss_median", "loss_q10", "loss_q90", "log10_loss_mean", "n_tasks", "n_nonfinite",
               "n_diverged", "n_blowup", "steps_to_0.1x", "steps_to_0.01x", "steps_to_0.001x", "sec_per_step")
COUNT_COLUMNS = ("step", "n_tasks", "n_nonfinite", "n_diverged", "n_blowup")
OUTPUT_FILES = ("results.csv", "results.md", "loss_curves.png")
TABLE_NOTE = ("Each cell: geometric mean [95% CI] (arithmetic mean) of the loss over tasks at that step; the CI is a "
              "Student-t interval on log10 loss. diverged: final loss non-finite or above the initial loss; "
              "blew up: final loss > 10× the task's best. s/step: seconds per step for the whole batch of tasks.")


def rows(results: list[Result]) -> list[dict[str, Any]]:
    """One row per (method, reported step): the loss statistics over tasks at that step (`summarize`), the
    run's failure counts, steps to reach 0.1/0.01/0.001 × the initial loss, seconds per step."""
    out = []
    for r in results:
        T = r.traj.loss.shape[0] - 1
        reach = {f"steps_to_{f:g}x": steps_to_reach(r.traj.loss, f) for f in REACH_FACTORS}
        sec = float(r.traj.seconds[-1]) / T
        fails = divergence(r.traj.loss)
        for s in report_steps(T):
            out.append({"method": r.name, "step": s, **summarize(r.traj.loss[s]), **fails, **reach, "sec_per_step": sec})
    return out


def tables(results: list[Result]) -> tuple[list[dict[str, Any]], str, str]:
    """(rows, results.csv text, results.md text)."""
    table = rows(results)
    csv_rows = [{k: (int(v) if k in COUNT_COLUMNS else v) for k, v in r.items()} for r in table]
    return table, csv_text(csv_rows, CSV_COLUMNS), markdown(table) + tuning_note(results)


def tuning_note(results: list[Result]) -> str:
    """One line naming each tuned baseline's learning rate and the horizon it was tuned for ('' if none)."""
    tuned = [f"{r.name} lr {r.hparams['lr']:.3g}" for r in results if "tuned_for_steps" in r.hparams]
    horizons = sorted({r.hparams["tuned_for_steps"] for r in results if "tuned_for_steps" in r.hparams})
    if not tuned:
        return ""
    return (f"\nTuned on validation tasks (seeds from 3·10⁹) for {', '.join(map(str, horizons))} steps: "
            f"{', '.join(tuned)}.\n")


def markdown(table: list[dict[str, Any]]) -> str:
    steps = sorted({r["step"] for r in table})
    methods = list(dict.fromkeys(r["method"] for r in table))
    by = {(r["method"], r["step"]): r for r in table}
    lines = [TABLE_NOTE, "", "| method | " + " | ".join(f"loss @ {s}" for s in steps) + " | diverged | blew up | "
             "steps to 0.1× / 0.01× / 0.001× L0 (median) | s/step |",
             "|---|" + "---|" * len(steps) + "---|---|---|---|"]
    for m in methods:
        cells = []
        for s in steps:
            r = by[m, s]
            bad = int(r["n_nonfinite"])
            if not math.isfinite(r["geo_mean"]):  # no finite task: nothing to summarize
                cells.append(f"{UNDEFINED} ({bad} non-finite)")
                continue
            extra = f", {bad} non-finite" if bad else ""
            cells.append(f"{ci(r['geo_mean'], r['geo_ci95_low'], r['geo_ci95_high'])} ({fmt(r['loss_mean'])}{extra})")
        last = by[m, steps[-1]]
        reach = " / ".join(fmt(last[f"steps_to_{f:g}x"]) for f in REACH_FACTORS)
        n = int(last["n_tasks"])
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {int(last['n_diverged'])}/{n} | {int(last['n_blowup'])}/{n} "
                     f"| {reach} | {last['sec_per_step']:.2e} |")
    return "\n".join(lines) + "\n"


def write_tensorboard(results: list[Result], logdir: Path) -> int:
    """One run per method (so curves overlay), per-step and per-microsecond tags on a log10 scale, each
    recorder's per-step median over tasks, hparams and a custom-scalars layout (stored in the first method's
    run, so that it does not show up as a run of its own). Returns the number of undefined points left out."""
    base = time.time()
    skipped = 0
    for i, r in enumerate(results):
        points = []
        st = summarize_steps(r.traj.loss)
        grad = summarize_steps(r.traj.grad_norm_sq)["log10_loss_mean"]  # mean log10 ‖∇L‖² of the finite tasks
        seconds = r.traj.seconds.tolist()
        for s in range(r.traj.loss.shape[0]):
            vals = {"loss_mean": st["loss_mean"][s], "log10_loss_mean": st["log10_loss_mean"][s],
                    **{f"log10_loss_{q}": math.log10(st[f"loss_{q}"][s]) if st[f"loss_{q}"][s] > 0 else math.nan
                       for q in ("median", "q10", "q90")},
                    "log10_grad_norm_sq": grad[s]}
            wall = base + seconds[s]  # walltime = elapsed run time: "relative" = seconds of optimization
            for tag in TB_TAGS:
                points += [Point(f"eval/{tag}", float(vals[tag]), s, wall),
                           Point(f"eval_vs_time_us/{tag}", float(vals[tag]), round(seconds[s] * 1e6), wall)]
            for name, rec in r.records.items():  # median over tasks of each recorded channel
                points += [Point(f"{name}/{ch}_median", float(np.nanmedian(rec.values[:, s, k])), s, wall)
                           for k, ch in enumerate(rec.channels)]
        final = summarize(r.traj.loss[-1], intervals=False)
        metrics = {"hparam/final_log10_loss_mean": final["log10_loss_mean"],
                   "hparam/n_diverged": divergence(r.traj.loss)["n_diverged"]}
        points += [Point(k, v, r.traj.loss.shape[0] - 1) for k, v in metrics.items()]
        skipped += write_run(logdir / r.name, points, hparams=({"method": r.name, **r.hparams}, metrics),
                             layout=LAYOUT if i == 0 else None)
    return skipped


LAYOUT = {"compare (all methods, log10 scale)": {
    "log10 loss: median with q10–q90": ["Margin", ["eval/log10_loss_median", "eval/log10_loss_q10",
                                                   "eval/log10_loss_q90"]],
    "log10 loss: mean over tasks": ["Multiline", [r"eval/log10_loss_mean"]],
    "log10 ‖∇L‖²: mean over tasks": ["Multiline", [r"eval/log10_grad_norm_sq"]],
    "log10 loss vs time (µs): median with q10–q90": ["Margin", ["eval_vs_time_us/log10_loss_median",
                                                               "eval_vs_time_us/log10_loss_q10",
                                                               "eval_vs_time_us/log10_loss_q90"]],
}}


def plot(results: list[Result]) -> bytes:
    """loss_curves.png: median and q10–q90 band over tasks per method, against steps and seconds."""
    plt = pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, r in enumerate(results):
        L = r.traj.loss.double().cpu()
        L = torch.where(torch.isfinite(L), L, torch.tensor(math.nan, dtype=L.dtype))
        q = torch.nanquantile(L, torch.tensor([0.1, 0.5, 0.9], dtype=L.dtype), dim=1)
        colour, style = f"C{i % 10}", ("-", "--", ":")[i // 10 % 3]  # 10 colours, then dashed: no two alike
        for ax, x in ((axes[0], torch.arange(L.shape[0])), (axes[1], r.traj.seconds)):
            ax.plot(x, q[1], color=colour, ls=style, label=r.name)
            ax.fill_between(x, q[0], q[2], color=colour, alpha=0.15)
    for ax, xlabel in zip(axes, ("inner step", "seconds (batch of tasks)")):
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("loss (median, q10–q90 band)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return png_bytes(fig)


def report(results: list[Result], logdir: Path | None, out: Path) -> list[dict[str, Any]]:
    """Write OUTPUT_FILES in `out` (all or none) and TensorBoard runs in `logdir`; returns the rows."""
    table, csv_file, md = tables(results)
    write_files(out, dict(zip(OUTPUT_FILES, (csv_file, md, plot(results)))))
    if logdir is not None:
        write_tensorboard(results, logdir)
    return table
