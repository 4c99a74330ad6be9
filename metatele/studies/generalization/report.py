"""The generalization study's report: Markdown tables, figures, TensorBoard runs, and `main`, which writes
each dataset's result set all or none (`metatele generalization`)."""
from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from metatele import datasets
from metatele.errors import ConfigError
from metatele.evaluation.stats import t_interval
from metatele.io import atomic_write_text, csv_text, json_text, write_files
from metatele.reporting import ci, fmt
from metatele.reporting.plotting import png_bytes, pyplot
from metatele.reporting.tensorboard import Point, write_run
from metatele.studies.generalization.correlation import correlation_study
from metatele.studies.generalization.plan import GROUPS, MEASURES, TARGETS, VARIANTS, Plan, default_datasets
from metatele.studies.generalization.teleport import teleport_study, teleport_table
from metatele.tasks.seeds import MAX_SEED, PAPER_SEED_STRIDE

__all__ = ["correlation_markdown", "teleport_markdown", "scatter_png", "teleport_png", "write_tensorboard", "main"]


def _ci(row: dict[str, Any], key: str, spec: str = ".3g") -> str:
    return ci(row[key], row[f"{key}_lo"], row[f"{key}_hi"], spec)


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
                     f"{fmt(r['dw_rel'], '.2g')} | {_ci(r, 'train_loss_jump', '+.3f')} | {_ci(r, 'val_loss_jump', '+.3f')} | "
                     f"{_ci(r, 'val_loss_diff_final', '+.3f')} | {_ci(r, 'val_loss_diff_mean', '+.3f')} | "
                     f"{_ci(acc, 'val_acc_diff_final', '+.2f')} |")
    return "\n".join(lines) + "\n"


def scatter_png(rows: list[dict[str, Any]]) -> bytes:
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
    return png_bytes(fig)


def teleport_png(result: dict[str, Any], plan: Plan) -> bytes:
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
    return png_bytes(fig)


def write_tensorboard(result: dict[str, Any], logdir: Path) -> None:
    """One run per dataset/group/variant (and dataset/none): mean validation loss/accuracy and training loss per
    epoch, and the paired difference to no teleport with its CI."""
    curves = {k: np.asarray(v) for k, v in result["curves"].items()}
    for a, (group, name) in enumerate(result["arms"]):
        points = []
        for e in range(curves["val_loss"].shape[2]):
            points += [Point(f"mean/{key}", float(curves[key][a, :, e].mean()), e + 1) for key in curves]
            if a:
                for key in ("val_loss", "val_acc"):
                    m, lo, hi = t_interval(curves[key][a, :, e] - curves[key][0, :, e])
                    points += [Point(f"vs_none/{key}_diff{suffix}", float(v), e + 1)
                               for suffix, v in (("", m), ("_ci_lo", lo), ("_ci_hi", hi))]
        write_run(logdir / result["dataset"] / ("none" if a == 0 else f"{group}-{name}"), points)


def main(dataset_names: Sequence[str] | None, plan: Plan, out: Path, logdir: Path, device: str = "cpu",
         parts: Sequence[str] = ("correlation", "teleport"), seed_offset: int = 0, progress: bool = True) -> int:
    """plan → run → rows for each dataset; write out/<dataset>/{runs.csv, correlation.csv, correlation.md,
    scatter.png, teleports.csv, teleport.csv, teleport.md, teleport.png, results.json} and TensorBoard runs."""
    names = list(dataset_names) if dataset_names else default_datasets()
    if "correlation" in parts and plan.runs < 3:
        raise ConfigError(f"a correlation needs at least 3 runs per seed set, got --runs {plan.runs}")
    if "teleport" in parts and plan.teleport_seeds < 2:
        raise ConfigError(f"a confidence interval over seeds needs at least 2 teleport seeds, got {plan.teleport_seeds}")
    if "teleport" in parts and not 1 <= plan.teleport_epoch < plan.epochs:
        raise ConfigError(f"the teleport epoch must be in 1..{plan.epochs - 1} (below --epochs), got {plan.teleport_epoch}")
    largest = max(plan.runs * plan.seed_sets, plan.teleport_seeds)
    if (largest + seed_offset) * PAPER_SEED_STRIDE + 1 > MAX_SEED:  # seeds (i + 1 + offset)·stride, and seed + 1
        raise ConfigError(f"the seed offset must be at most {(MAX_SEED - 1) // PAPER_SEED_STRIDE - largest} for "
                          f"{largest} runs (seeds stay below 2^63), got {seed_offset}")
    report = [f"# metatele generalization: {', '.join(names)}\n",
              f"plan: {json.dumps(asdict(plan))}; seed offset {seed_offset}; device {device}\n"]
    for name in names:
        datasets.load(name)  # a missing dataset fails here, before any work
    start = time.perf_counter()
    for name in names:
        t0 = time.perf_counter()
        files: dict[str, str | bytes] = {}
        result: dict[str, Any] = {"dataset": name, "plan": asdict(plan), "seed_offset": seed_offset}
        if "correlation" in parts:
            rows, table = correlation_study(name, plan, device, seed_offset, progress)
            files.update({"runs.csv": csv_text(rows), "correlation.csv": csv_text(table),
                          "correlation.md": correlation_markdown(table), "scatter.png": scatter_png(rows)})
            result.update(runs=rows, correlation=table)
            report += [f"\n## {name}: correlation at the final SGD weights\n\n", correlation_markdown(table)]
        if "teleport" in parts:
            tele = teleport_study(name, plan, device, seed_offset, progress)
            rows = teleport_table(tele, plan)
            files.update({"teleports.csv": csv_text(tele["records"]), "teleport.csv": csv_text(rows),
                          "teleport.md": teleport_markdown(rows), "teleport.png": teleport_png(tele, plan)})
            write_tensorboard(tele, logdir)
            result.update(teleport=tele, teleport_table=rows)
            report += [f"\n## {name}: teleport once at epoch {plan.teleport_epoch} (paired differences to no "
                       f"teleport, t 95% CI over {plan.teleport_seeds} seeds)\n\n", teleport_markdown(rows)]
        write_files(out / name, {**files, "results.json": json_text(result)})
        report.append(f"\n{name}: {time.perf_counter() - t0:.0f} s\n")
    report.append(f"\ntotal: {time.perf_counter() - start:.0f} s\n")
    text = "".join(report)
    atomic_write_text(out / "generalization.md", text)
    print(text, end="")
    print(f"wrote {out}/generalization.md and per-dataset tables, figures and results.json under {out}/; "
          f"TensorBoard: tensorboard --logdir {logdir}")
    return 0
