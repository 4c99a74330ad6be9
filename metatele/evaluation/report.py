"""The compare report: CSV and Markdown tables, a PNG of the loss curves, and TensorBoard runs (one run
per method, so the curves overlay)."""
from __future__ import annotations

import csv
import io
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metatele.checkpoints import atomic_write_text
from metatele.evaluation.compare import Result
from metatele.evaluation.stats import divergence, fmt, report_steps, steps_to_reach, summarize
from metatele.plotting import pyplot, save_png

__all__ = ["REACH_FACTORS", "LAYOUT", "TABLE_NOTE", "TB_TAGS", "CSV_COLUMNS", "rows", "markdown", "tuning_note", "write_tables",
           "write_tensorboard", "plot", "report"]

REACH_FACTORS = (1e-1, 1e-2, 1e-3)
TB_TAGS = ("loss_mean", "log10_loss_mean", "log10_loss_median", "log10_loss_q10", "log10_loss_q90",
           "log10_grad_norm_sq")
CSV_COLUMNS = ("method", "step", "geo_mean", "geo_ci95_low", "geo_ci95_high", "loss_mean", "loss_ci95_low",
               "loss_ci95_high", "loss_median", "loss_q10", "loss_q90", "log10_loss_mean", "n_tasks", "n_nonfinite",
               "n_diverged", "n_blowup", "steps_to_0.1x", "steps_to_0.01x", "steps_to_0.001x", "sec_per_step")
TABLE_NOTE = ("Each cell: geometric mean [95% CI] (arithmetic mean) of the loss over tasks at that step; the CI is a "
              "Student-t interval on log10 loss. diverged: final loss non-finite or above the initial loss; "
              "blew up: final loss > 10× the task's best. s/step: seconds per step for the whole batch of tasks.")


def rows(results: list[Result]) -> list[dict[str, Any]]:
    out = []
    for r in results:
        T = r.traj.loss.shape[0] - 1
        reach = {f"steps_to_{f:g}x": steps_to_reach(r.traj.loss, f) for f in REACH_FACTORS}
        sec = float(r.traj.seconds[-1]) / T
        fails = divergence(r.traj.loss)
        for s in report_steps(T):
            out.append({"method": r.name, "step": s, **summarize(r.traj.loss[s]), **fails, **reach, "sec_per_step": sec})
    return out


def write_tables(results: list[Result], out: Path) -> list[dict[str, Any]]:
    table = rows(results)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    w.writeheader()
    for row in table:
        w.writerow({k: (int(v) if k in ("n_tasks", "n_nonfinite", "n_diverged", "n_blowup", "step") else v)
                    for k, v in row.items()})
    atomic_write_text(out / "results.csv", buf.getvalue())
    atomic_write_text(out / "results.md", markdown(table) + tuning_note(results))
    return table


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
            extra = f", {int(r['n_nonfinite'])} non-finite" if r["n_nonfinite"] else ""
            cells.append(f"{fmt(r['geo_mean'])} [{fmt(r['geo_ci95_low'])}, {fmt(r['geo_ci95_high'])}] "
                         f"({fmt(r['loss_mean'])}{extra})")
        last = by[m, steps[-1]]
        reach = " / ".join(fmt(last[f"steps_to_{f:g}x"]) for f in REACH_FACTORS)
        n = int(last["n_tasks"])
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {int(last['n_diverged'])}/{n} | {int(last['n_blowup'])}/{n} "
                     f"| {reach} | {last['sec_per_step']:.2e} |")
    return "\n".join(lines) + "\n"


def _log10_mean(x: torch.Tensor) -> float:
    x = x[torch.isfinite(x)].double()
    return float(x.clamp_min(1e-300).log10().mean()) if x.numel() else math.nan


def write_tensorboard(results: list[Result], logdir: Path) -> None:
    """One run per method (so curves overlay), per-step and per-microsecond tags on a log10 scale, hparams and a
    custom-scalars layout (stored in the first method's run, so that it does not show up as a run of its own)."""
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    base = time.time()
    for i, r in enumerate(results):
        with SummaryWriter(str(logdir / r.name)) as w:
            for s in range(r.traj.loss.shape[0]):
                st = summarize(r.traj.loss[s], intervals=False)
                vals = {"loss_mean": st["loss_mean"], "log10_loss_mean": st["log10_loss_mean"],
                        **{f"log10_loss_{q}": math.log10(st[f"loss_{q}"]) if st[f"loss_{q}"] > 0 else math.nan
                           for q in ("median", "q10", "q90")},
                        "log10_grad_norm_sq": _log10_mean(r.traj.grad_norm_sq[s])}
                sec = float(r.traj.seconds[s])
                for tag in TB_TAGS:
                    # walltime = elapsed run time, so TensorBoard's "relative" axis is seconds of optimization
                    w.add_scalar(f"eval/{tag}", vals[tag], s, walltime=base + sec)
                    w.add_scalar(f"eval_vs_time_us/{tag}", vals[tag], round(sec * 1e6), walltime=base + sec)
                if r.repdyn is not None:  # two-point representation dynamics, median over tasks
                    for k, name in enumerate(("H", "Yd", "w")):
                        w.add_scalar(f"repdyn/{name}_median", float(np.nanmedian(r.repdyn[:, s, k])), s, walltime=base + sec)
            final = summarize(r.traj.loss[-1], intervals=False)
            fails = divergence(r.traj.loss)
            hp = {"method": r.name, **{k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in r.hparams.items()}}
            metrics = {"hparam/final_log10_loss_mean": final["log10_loss_mean"], "hparam/n_diverged": fails["n_diverged"]}
            for summ in hparams(hp, metrics):
                w.file_writer.add_summary(summ)
            for k, v in metrics.items():
                w.add_scalar(k, v, r.traj.loss.shape[0] - 1)
            if i == 0:
                w.add_custom_scalars(LAYOUT)


LAYOUT = {"compare (all methods, log10 scale)": {
    "log10 loss: median with q10–q90": ["Margin", ["eval/log10_loss_median", "eval/log10_loss_q10",
                                                   "eval/log10_loss_q90"]],
    "log10 loss: mean over tasks": ["Multiline", [r"eval/log10_loss_mean"]],
    "log10 ‖∇L‖²: mean over tasks": ["Multiline", [r"eval/log10_grad_norm_sq"]],
    "log10 loss vs time (µs): median with q10–q90": ["Margin", ["eval_vs_time_us/log10_loss_median",
                                                               "eval_vs_time_us/log10_loss_q10",
                                                               "eval_vs_time_us/log10_loss_q90"]],
}}


def plot(results: list[Result], path: Path) -> None:
    plt = pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, r in enumerate(results):
        L = r.traj.loss.double().cpu()
        L = torch.where(torch.isfinite(L), L, torch.tensor(math.nan, dtype=L.dtype))
        q = torch.nanquantile(L, torch.tensor([0.1, 0.5, 0.9], dtype=L.dtype), dim=1)
        colour = f"C{i}"
        for ax, x in ((axes[0], torch.arange(L.shape[0])), (axes[1], r.traj.seconds)):
            ax.plot(x, q[1], color=colour, label=r.name)
            ax.fill_between(x, q[0], q[2], color=colour, alpha=0.15)
    for ax, xlabel in zip(axes, ("inner step", "seconds (batch of tasks)")):
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("loss (median, q10–q90 band)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path)


def report(results: list[Result], logdir: Path | None, out: Path) -> list[dict[str, Any]]:
    """Write results.csv, results.md, loss_curves.png (in `out`) and TensorBoard runs (in `logdir`)."""
    table = write_tables(results, out)
    plot(results, out / "loss_curves.png")
    if logdir is not None:
        write_tensorboard(results, logdir)
    return table
