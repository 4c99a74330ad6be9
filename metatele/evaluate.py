"""Evaluation on unseen tasks, baselines tuned on validation tasks, and the `compare` report.

Every method runs on the same tasks (seeds S..S+tasks−1, disjoint from training). Statistics are
taken over the finite tasks only; diverged tasks are counted in `n_diverged`, never averaged in.
"""
from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metatele import baselines, checkpoints, step, tasks
from metatele.errors import ConfigError

REPORT_STEPS = (1, 10, 30, 100)
REACH_FACTORS = (1e-1, 1e-2, 1e-3)
GD_GRID = tuple(10 ** (k / 2) for k in range(-12, -4))      # 1e-6 … 3.2e-3
ADAM_GRID = tuple(10 ** (k / 2) for k in range(-8, 2))      # 1e-4 … 3.2
TB_TAGS = ("loss_mean", "log10_loss_mean", "loss_median", "loss_q10", "loss_q90", "grad_norm_sq")
LEARNED = ("lstm-lr-tele", "lstm-update", "lstm-update-tele")


def summarize(loss: torch.Tensor) -> dict[str, float]:
    """Statistics of per-task losses (B,) over the finite tasks; diverged tasks are counted, not averaged."""
    finite = torch.isfinite(loss)
    L = loss[finite].double().cpu()
    n = int(L.numel())
    out = {"n_tasks": float(loss.numel()), "n_diverged": float((~finite).sum())}
    if n == 0:
        nan = math.nan
        return {**out, "loss_mean": nan, "loss_std": nan, "loss_ci95_low": nan, "loss_ci95_high": nan,
                "loss_median": nan, "loss_q10": nan, "loss_q90": nan, "log10_loss_mean": nan}
    mean = float(L.mean())
    std = float(L.std()) if n > 1 else 0.0
    half = 1.96 * std / math.sqrt(n)
    q = torch.quantile(L, torch.tensor([0.1, 0.5, 0.9], dtype=L.dtype))
    return {**out, "loss_mean": mean, "loss_std": std, "loss_ci95_low": mean - half, "loss_ci95_high": mean + half,
            "loss_median": float(q[1]), "loss_q10": float(q[0]), "loss_q90": float(q[2]),
            "log10_loss_mean": float(L.clamp_min(1e-300).log10().mean())}


def steps_to_reach(loss: torch.Tensor, factor: float) -> float:
    """Median over tasks of the first step with loss ≤ factor·loss[0]; inf where a task never gets there.
    loss: (steps+1, B)."""
    ok = (loss <= factor * loss[0:1]) & torch.isfinite(loss)
    idx = torch.where(ok.any(0), ok.float().argmax(0).double(), torch.tensor(math.inf, dtype=torch.float64))
    return float(idx.median())


@dataclass
class Result:
    name: str
    hparams: dict[str, Any]
    traj: step.Trajectory
    repdyn: Any = None  # (B, steps+1, 3) probe series of (H, Yd, w), when requested


def _score(traj: step.Trajectory) -> float:
    """Tuning score: mean log10 final loss; +inf if any task diverged."""
    final = traj.loss[-1]
    return float(final.clamp_min(1e-300).log10().mean()) if torch.isfinite(final).all() else math.inf


def tune(make: Any, grid: Sequence[float], valid: tasks.TaskBatch, steps: int) -> float:
    """The lr from `grid` with the best validation score for method `make(lr)`."""
    scores = [(_score(step.run(make(lr), valid, steps)), lr) for lr in grid]
    return min(scores)[1]


def methods_for(checkpoint_dir: Path | None, valid: tasks.TaskBatch, steps: int, device: str) -> list[tuple[step.Method, dict]]:
    """Baselines (tuned on `valid`) and every learned method found under checkpoint_dir."""
    gd_lr = tune(lambda lr: baselines.GD(lr), GD_GRID, valid, steps)
    adam_lr = tune(lambda lr: baselines.Adam(lr), ADAM_GRID, valid, steps)
    out: list[tuple[step.Method, dict]] = [
        (baselines.GD(), {"lr": baselines.PAPER_GD_LR}),
        (baselines.GD(gd_lr, name="gd-tuned"), {"lr": gd_lr, "grid": "1e-6..3e-3 (x10^0.5)"}),
        (baselines.Adam(adam_lr, name="adam-tuned"), {"lr": adam_lr, "grid": "1e-4..3.2 (x10^0.5)"}),
    ]
    ga = baselines.GDTeleport()
    out.append((ga, {"lr": ga.lr, "teleport_every": ga.every, "teleport_until": ga.until, "ascent_steps": ga.ascent_steps}))
    if checkpoint_dir is not None:
        for name in LEARNED:
            path = checkpoint_dir / name / checkpoints.MODEL_FILE
            if path.exists():
                model = checkpoints.load_meta_optimizer(path, method=name, widths=valid.widths, device=device)
                spec = model.spec
                out.append((model, {"hidden": spec.hidden, "eps": spec.eps, "exact": spec.exact,
                                    "preprocessing": spec.preprocessing, "gate": spec.gate,
                                    "trajectories_seen": model.metadata.get("trajectories_seen", -1)}))
    return out


def evaluate(methods: list[tuple[step.Method, dict]], task: tasks.TaskBatch, steps: int, progress: bool = True,
             probe_layer: int | None = None) -> list[Result]:
    """Run every method on the same tasks; probe_layer: also record the two-point (H, Yd, w) of samples
    0 and 1 at that hidden layer (metatele.repdyn)."""
    from tqdm import tqdm

    from metatele import repdyn

    results = []
    for method, hp in tqdm(methods, desc="methods", disable=not progress, unit="method"):
        probe, callback = repdyn.task_probe(task.X, task.Y, probe_layer) if probe_layer else (None, None)
        traj = step.run(method, task, steps, callback)
        results.append(Result(method.name, hp, traj, probe.series() if probe is not None else None))
    return results


# --- outputs -----------------------------------------------------------------------------------

def rows(results: list[Result]) -> list[dict[str, Any]]:
    out = []
    for r in results:
        T = r.traj.loss.shape[0] - 1
        reach = {f"steps_to_{f:g}x": steps_to_reach(r.traj.loss, f) for f in REACH_FACTORS}
        sec = float(r.traj.seconds[-1]) / T
        for s in [s for s in REPORT_STEPS if s <= T] or [T]:
            out.append({"method": r.name, "step": s, **summarize(r.traj.loss[s]), **reach, "sec_per_step": sec})
    return out


CSV_COLUMNS = ("method", "step", "loss_mean", "loss_ci95_low", "loss_ci95_high", "loss_median", "loss_q10",
               "loss_q90", "log10_loss_mean", "n_tasks", "n_diverged", "steps_to_0.1x", "steps_to_0.01x",
               "steps_to_0.001x", "sec_per_step")


def write_tables(results: list[Result], out: Path) -> list[dict[str, Any]]:
    table = rows(results)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    w.writeheader()
    for row in table:
        w.writerow({k: (int(v) if k in ("n_tasks", "n_diverged", "step") else v) for k, v in row.items()})
    checkpoints.atomic_write_text(out / "results.csv", buf.getvalue())
    checkpoints.atomic_write_text(out / "results.md", markdown(table))
    return table


def _fmt(x: float) -> str:
    return "never" if x == math.inf else ("nan" if math.isnan(x) else f"{x:.3g}")


def markdown(table: list[dict[str, Any]]) -> str:
    steps = sorted({r["step"] for r in table})
    methods = list(dict.fromkeys(r["method"] for r in table))
    by = {(r["method"], r["step"]): r for r in table}
    lines = ["| method | " + " | ".join(f"loss @ {s} (mean [95% CI])" for s in steps) + " | diverged | "
             "steps to 0.1× / 0.01× / 0.001× L0 (median) | s/step |",
             "|---|" + "---|" * len(steps) + "---|---|---|"]
    for m in methods:
        cells = [f"{_fmt(by[m, s]['loss_mean'])} [{_fmt(by[m, s]['loss_ci95_low'])}, {_fmt(by[m, s]['loss_ci95_high'])}]"
                 for s in steps]
        last = by[m, steps[-1]]
        reach = " / ".join(_fmt(last[f"steps_to_{f:g}x"]) for f in REACH_FACTORS)
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    checkpoints.atomic_write(path, lambda tmp: Path(tmp).write_bytes(buf.getvalue()))


def eval_tasks(first_seed: int, n_tasks: int, widths: Sequence[int], n: int, device: str) -> tasks.TaskBatch:
    if n_tasks <= 0:
        raise ConfigError(f"--tasks must be positive, got {n_tasks}")
    if tasks.overlaps_training(first_seed, n_tasks):
        raise ConfigError(f"evaluation seeds {first_seed}..{first_seed + n_tasks - 1} overlap the training range "
                          f"{tasks.TRAIN_SEEDS.start}..{tasks.TRAIN_SEEDS.stop - 1}; use --first-seed ≥ {tasks.TRAIN_SEEDS.stop}")
    return tasks.sample(range(first_seed, first_seed + n_tasks), widths, n, device=device)


def report(results: list[Result], logdir: Path | None, out: Path) -> list[dict[str, Any]]:
    """Write results.csv, results.md, loss_curves.png (in `out`) and TensorBoard runs (in `logdir`)."""
    table = write_tables(results, out)
    plot(results, out / "loss_curves.png")
    if logdir is not None:
        write_tensorboard(results, logdir)
    return table
