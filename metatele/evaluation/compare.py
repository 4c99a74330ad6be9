"""Evaluation on unseen tasks: the methods to compare (baselines tuned on validation tasks, learned
methods from checkpoints) and the one `evaluate`, which runs them all on the same tasks with optional
recorders (e.g. `metatele.repdyn.probe.RepdynRecorder`, added by the CLI's --repdyn).

Every method runs on the same tasks (seeds S..S+tasks−1, disjoint from training). Statistics are taken over
the finite tasks only (`metatele.evaluation.stats`).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch
from tqdm import tqdm

from metatele import checkpoints
from metatele.errors import ConfigError, SeedOverlapError
from metatele.evaluation.tuned_lrs import TunedLRs
from metatele.learned import LEARNED
from metatele.methods.base import Method
from metatele.methods.registry import PAPER_GD_LR, baseline
from metatele.step import Trajectory, rollout
from metatele.tasks.base import TaskBatch, TaskFamily
from metatele.tasks.seeds import MAX_SEED, TRAIN_SEEDS, VALID_RANGE, overlaps_training, overlaps_validation

__all__ = ["GD_GRID", "ADAM_GRID", "GRID_BATCH_WEIGHTS", "Entry", "Result", "Record", "Callback", "Recorder", "tune", "baselines", "learned_paths", "learned", "evaluate",
           "check_test_seeds", "test_tasks"]

GD_GRID = tuple(10 ** (k / 2) for k in range(-12, 3))       # 1e-6 … 10: wide enough for every task family
ADAM_GRID = tuple(10 ** (k / 2) for k in range(-8, 2))      # 1e-4 … 3.2
GRID_BATCH_WEIGHTS = 1 << 24  # weights (all tasks, all lrs) in one of `tune`'s batched rollouts: 64 MiB in float32


@dataclass
class Entry:
    """A method to evaluate and the hyper-parameters to report with it."""

    method: Method
    hparams: dict[str, Any]


Callback = Callable[[int, Sequence[torch.Tensor]], None]  # (step, weights) → None, called by `rollout`


class Recorder(Protocol):
    """Records a series along each method's rollout: `start(task)` gives the rollout callback and a function
    that returns the series recorded, an array (B, steps+1, len(channels))."""

    name: str
    channels: tuple[str, ...]

    def start(self, task: TaskBatch) -> tuple[Callback, Callable[[], np.ndarray]]: ...


class Record(NamedTuple):
    """What a recorder recorded along one method's run: values (B, steps+1, len(channels))."""

    channels: tuple[str, ...]
    values: np.ndarray


@dataclass
class Result:
    """One method's run: its trajectory and what each recorder recorded, by recorder name."""

    name: str
    hparams: dict[str, Any]
    traj: Trajectory
    records: dict[str, Record] = field(default_factory=dict)


def _score(final: torch.Tensor) -> float:
    """Tuning score of one lr's final losses (B,): mean log10 final loss; +inf if any task diverged."""
    return float(final.clamp_min(1e-300).log10().mean()) if torch.isfinite(final).all() else math.inf


def tune(make: Callable[[float | torch.Tensor], Method], grid: Sequence[float], valid: TaskBatch, steps: int
         ) -> float:
    """The lr from `grid` with the best validation score for method `make(lr)`.

    Where `valid` (B tasks) can be tiled (`TaskBatch.tile`), the grid runs as one batch: `valid` tiled once per lr,
    copy j with lr grid[j] (`make` then gets a per-task lr (copies·B,)), in rollouts of at most GRID_BATCH_WEIGHTS
    weights. A task's run there is the one that a rollout of make(grid[j]) on `valid` alone gives (bit for bit
    on the CPU: tests/test_compare.py), so the lr chosen is the same; it costs one rollout's Python overhead
    instead of len(grid)."""
    w0 = valid.init_weights()[0]
    B = w0.shape[0]
    if not hasattr(valid, "tile"):
        finals = [rollout(make(lr), valid, steps).loss[-1] for lr in grid]
    else:
        per_copy = sum(w.numel() for w in valid.init_weights())
        chunk = max(1, min(len(grid), GRID_BATCH_WEIGHTS // per_copy))
        finals = []
        for i in range(0, len(grid), chunk):
            lrs = grid[i:i + chunk]
            lr = torch.tensor(lrs, dtype=w0.dtype, device=w0.device).repeat_interleave(B)
            finals += rollout(make(lr), valid.tile(len(lrs)), steps).loss[-1].split(B)
    return min((_score(f), lr) for f, lr in zip(finals, grid))[1]


def baselines(valid: TaskBatch, steps: int, cache: TunedLRs | None = None) -> list[Entry]:
    """GD at the paper's lr; GD, Adam and GD with gradient-ascent teleport (the paper's schedule: after steps 0,
    10, …, 40), each with the lr tuned on `valid` for `steps` steps, or taken from `cache` (built for `valid`'s
    problem) where it holds that baseline, grid and horizon. GD's teleport needs its own lr: a teleport to a
    steeper point also raises the curvature, and GD at the largest lr that is stable without teleport (tuned
    GD's) then overshoots."""
    def tuned(kind: str, grid: Sequence[float]) -> float:
        make = lambda lr: baseline(kind, lr=lr)  # noqa: E731
        if cache is None:
            return tune(make, grid, valid, steps)
        return cache.lr(make(grid[0]), grid, steps, lambda: tune(make, grid, valid, steps))

    gd_lr, adam_lr, ga_lr = tuned("gd", GD_GRID), tuned("adam", ADAM_GRID), tuned("gd-teleport", GD_GRID)
    ga = baseline("gd-teleport", lr=ga_lr)
    return [
        Entry(baseline("gd"), {"lr": PAPER_GD_LR}),
        Entry(baseline("gd", "gd-tuned", lr=gd_lr), {"lr": gd_lr, "grid": "1e-6..10 (x10^0.5)", "tuned_for_steps": steps}),
        Entry(baseline("adam", "adam-tuned", lr=adam_lr), {"lr": adam_lr, "grid": "1e-4..3.2 (x10^0.5)",
                                                          "tuned_for_steps": steps}),
        Entry(ga, {**ga.hparams, "grid": "1e-6..10 (x10^0.5)", "tuned_for_steps": steps}),
    ]


def learned_paths(checkpoint_dir: Path) -> dict[str, Path]:
    """Where each learned method's checkpoint is looked for: checkpoint_dir/<name>/model.safetensors."""
    return {name: checkpoint_dir / name / checkpoints.MODEL_FILE for name in LEARNED}


def learned(checkpoint_dir: Path, widths: Sequence[int], device: str | torch.device
            ) -> tuple[list[Entry], list[str]]:
    """Every learned method (registry order) with a model.safetensors under checkpoint_dir/<name>/ that can run
    on networks of `widths`; and the names skipped because they are fixed-size methods of another shape."""
    out, skipped = [], []
    for name, path in learned_paths(checkpoint_dir).items():
        if path.exists():
            model = checkpoints.load_model(path, method=name, device=device)
            fixed, spec = model.spec.fixed_widths, model.spec.to_dict()
            if fixed and fixed != tuple(widths):
                skipped.append(f"{name} (trained for widths {list(fixed)})")
                continue
            hparams = {k: spec[k] for k in ("hidden", "magnitude", "exact", "preprocessing", "gate", "update_form")
                       if k in spec}
            out.append(Entry(model, {**hparams, "trajectories_seen": model.metadata.get("trajectories_seen", -1)}))
    return out, skipped


def evaluate(entries: Sequence[Entry], task: TaskBatch, steps: int, progress: bool = True,
             recorders: Sequence[Recorder] = ()) -> list[Result]:
    """Run every method for `steps` steps on the same tasks (a batch of B), each recorder recording along."""
    results = []
    for e in tqdm(entries, desc="methods", disable=not progress, unit="method"):
        started = [(r, *r.start(task)) for r in recorders]

        def callback(t: int, weights: Sequence[torch.Tensor]) -> None:
            for _, record, _ in started:
                record(t, weights)

        traj = rollout(e.method, task, steps, callback if started else None)
        records = {r.name: Record(r.channels, series()) for r, _, series in started}
        results.append(Result(e.method.name, e.hparams, traj, records))
    return results


def check_test_seeds(first_seed: int, n_tasks: int) -> None:
    """Refuse test seeds first_seed … first_seed+n_tasks−1 that overlap training or the validation range
    (baseline tuning and held-out evaluation during training) with SeedOverlapError, and seeds outside
    [0, MAX_SEED] with ConfigError."""
    if n_tasks <= 0:
        raise ConfigError(f"the number of tasks must be positive, got {n_tasks}")
    last = first_seed + n_tasks - 1
    if first_seed < 0 or last > MAX_SEED:
        raise ConfigError(f"evaluation seeds {first_seed}..{last} leave the seed range 0..{MAX_SEED} (2^63−1)")
    if overlaps_training(first_seed, n_tasks):
        raise SeedOverlapError(f"evaluation seeds {first_seed}..{last} overlap the training range "
                               f"{TRAIN_SEEDS.start}..{TRAIN_SEEDS.stop - 1}; start at {TRAIN_SEEDS.stop} or later")
    if overlaps_validation(first_seed, n_tasks):
        raise SeedOverlapError(f"evaluation seeds {first_seed}..{last} overlap the validation range "
                               f"{VALID_RANGE.start}..{VALID_RANGE.stop - 1} (baseline tuning, held-out evaluation "
                               f"during training); start at {VALID_RANGE.stop} or later")


def test_tasks(family: TaskFamily, first_seed: int, n_tasks: int, device: str | torch.device) -> TaskBatch:
    """Tasks first_seed … first_seed+n_tasks−1 of `family`, refusing seeds that overlap training."""
    check_test_seeds(first_seed, n_tasks)
    return family.sample(range(first_seed, first_seed + n_tasks), device=device)
