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
from metatele.evaluation.stats import fmt, steps_to_reach, summarize
from metatele.plotting import pyplot, save_png

__all__ = ["REPORT_STEPS", "REACH_FACTORS", "TB_TAGS", "CSV_COLUMNS", "rows", "markdown", "write_tables",
           "write_tensorboard", "plot", "report"]

REPORT_STEPS = (1, 10, 30, 100)
REACH_FACTORS = (1e-1, 1e-2, 1e-3)
TB_TAGS = ("loss_mean", "log10_loss_mean", "loss_median", "loss_q10", "loss_q90", "grad_norm_sq")
CSV_COLUMNS = ("method", "step", "loss_mean", "loss_ci95_low", "loss_ci95_high", "loss_median", "loss_q10",
               "loss_q90", "log10_loss_mean", "n_tasks", "n_diverged", "steps_to_0.1x", "steps_to_0.01x",
               "steps_to_0.001x", "sec_per_step")


def rows(results: list[Result]) -> list[dict[str, Any]]:
    out = []
    for r in results:
        T = r.traj.loss.shape[0] - 1
        reach = {f"steps_to_{f:g}x": steps_to_reach(r.traj.loss, f) for f in REACH_FACTORS}
        sec = float(r.traj.seconds[-1]) / T
        for s in [s for s in REPORT_STEPS if s <= T] or [T]:
            out.append({"method": r.name, "step": s, **summarize(r.traj.loss[s]), **reach, "sec_per_step": sec})
    return out


def write_tables(results: list[Result], out: Path) -> list[dict[str, Any]]:
    table = rows(results)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    w.writeheader()
    for row in table:
        w.writerow({k: (int(v) if k in ("n_tasks", "n_diverged", "step") else v) for k, v in row.items()})
    atomic_write_text(out / "results.csv", buf.getvalue())
    atomic_write_text(out / "results.md", markdown(table))
    return table


def markdown(table: list[dict[str, Any]]) -> str:
    steps = sorted({r["step"] for r in table})
    methods = list(dict.fromkeys(r["method"] for r in table))
    by = {(r["method"], r["step"]): r for r in table}
    lines = ["| method | " + " | ".join(f"loss @ {s} (mean [95% CI])" for s in steps) + " | diverged | "
             "steps to 0.1× / 0.01× / 0.001× L0 (median) | s/step |",
             "|---|" + "---|" * len(steps) + "---|---|---|"]
    for m in methods:
        cells = [f"{fmt(by[m, s]['loss_mean'])} [{fmt(by[m, s]['loss_ci95_low'])}, {fmt(by[m, s]['loss_ci95_high'])}]"
                 for s in steps]
        last = by[m, steps[-1]]
        reach = " / ".join(fmt(last[f"steps_to_{f:g}x"]) for f in REACH_FACTORS)
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {int(last['n_diverged'])}/{int(last['n_tasks'])} | "
                     f"{reach} | {last['sec_per_step']:.2e} |")
    return "\n".join(lines) + "\n"


def write_tensorboard(results: list[Result], logdir: Path) -> None:
    """One run per method (so curves overlay), per-step and per-second tags, hparams, custom scalars."""
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    base = time.time()
    for r in results:
        with SummaryWriter(str(logdir / r.name)) as w:
            for s in range(r.traj.loss.shape[0]):
                stats = summarize(r.traj.loss[s])
                gn = r.traj.grad_norm_sq[s]
                stats["grad_norm_sq"] = float(gn[torch.isfinite(gn)].double().mean()) if torch.isfinite(gn).any() else math.nan
                sec = float(r.traj.seconds[s])
                for tag in TB_TAGS:
                    # walltime = elapsed run time, so TensorBoard's "relative" axis is seconds of optimization
                    w.add_scalar(f"eval/{tag}", stats[tag], s, walltime=base + sec)
                    w.add_scalar(f"eval_vs_time_us/{tag}", stats[tag], round(sec * 1e6), walltime=base + sec)
                if r.repdyn is not None:  # two-point representation dynamics, median over tasks
                    for k, name in enumerate(("H", "Yd", "w")):
                        w.add_scalar(f"repdyn/{name}_median", float(np.nanmedian(r.repdyn[:, s, k])), s, walltime=base + sec)
            final = summarize(r.traj.loss[-1])
            hp = {"method": r.name, **{k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in r.hparams.items()}}
            metrics = {"hparam/final_log10_loss_mean": final["log10_loss_mean"], "hparam/n_diverged": final["n_diverged"]}
            for summ in hparams(hp, metrics):
                w.file_writer.add_summary(summ)
            for k, v in metrics.items():
                w.add_scalar(k, v, r.traj.loss.shape[0] - 1)
    with SummaryWriter(str(logdir)) as w:
        w.add_custom_scalars({
            "compare (all methods)": {
                "loss median with q10–q90": ["Margin", ["eval/loss_median", "eval/loss_q10", "eval/loss_q90"]],
                "log10 loss mean": ["Multiline", [r"eval/log10_loss_mean"]],
                "loss mean": ["Multiline", [r"eval/loss_mean"]],
                "grad norm²": ["Multiline", [r"eval/grad_norm_sq"]],
                "loss median vs time (µs) with q10–q90": ["Margin", ["eval_vs_time_us/loss_median", "eval_vs_time_us/loss_q10",
                                                                     "eval_vs_time_us/loss_q90"]],
            }
        })


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
