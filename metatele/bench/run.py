"""Run the suite: per problem, tune every baseline's lr on the tuning seeds (the whole grid as one batch), then run
the tuned baselines and the learned methods on the report seeds, batched over seeds, through the shared inner
step (`metatele.step.rollout`; `trajectory` records the loss each problem reports). Tuned Adam runs
SPEEDUP_FACTOR × the horizon, so that the speedup of a method that beats it can be measured (how many Adam steps
reach its final loss)."""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from metatele import checkpoints
from metatele.bench.baselines import BASELINES, LR_GRID, make
from metatele.bench.problems import EVAL_SAMPLES, REPORT_FIRST_SEED, TUNE_FIRST_SEED, Problem
from metatele.methods.base import Method
from metatele.step import Trajectory, rollout

__all__ = ["SEEDS", "TUNE_SEEDS", "SPEEDUP_FACTOR", "ProblemRun", "trajectory", "grid_scores", "tune", "global_lr",
           "baselines", "run_problem", "run_suite"]

SEEDS = 8            # reported runs per problem
TUNE_SEEDS = 4       # tuning runs per lr (disjoint seeds)
SPEEDUP_FACTOR = 3   # tuned Adam runs this many times the horizon


@dataclass
class ProblemRun:
    """One problem's runs: trajectories per method on the report seeds (tuned Adam's is SPEEDUP_FACTOR × longer)
    and each baseline's tuned lr."""

    problem: Problem
    trajectories: dict[str, Trajectory]
    lrs: dict[str, float]


def trajectory(problem: Problem, method: Method, task: Any, steps: int, every: int = 1) -> Trajectory:
    """`rollout` of `method` on `task` (B tasks of `problem`), its loss the one the problem reports: the training
    loss of a full-batch problem (steps+1, B), or a mini-batch problem's loss on its evaluation set
    (`Problem.eval_batch`) at steps 0, every, 2·every, … and after the last ((steps+1, B) for every = 1; grad norms
    stay the mini-batch ones)."""
    w0 = task.init_weights()[0]
    batch = problem.eval_batch(w0.shape[0], w0.dtype, w0.device)
    if batch is None:
        return rollout(method, task, steps)
    losses: list[torch.Tensor] = []

    def record(t: int, weights: list[torch.Tensor]) -> None:
        if t % every == 0 or t == steps:
            losses.append(task.loss(weights, batch))

    traj = rollout(method, task, steps, callback=record)
    return Trajectory(torch.stack(losses), traj.grad_norm_sq, traj.seconds)


def _score(final: torch.Tensor, first: torch.Tensor) -> float:
    """Tuning score of one lr over its seeds: mean log10 final loss; +inf if a run diverged (non-finite, or
    above its initial loss)."""
    if not bool((torch.isfinite(final) & (final <= first)).all()):
        return math.inf
    return float(final.double().clamp_min(1e-300).log10().mean())


def grid_scores(problem: Problem, kind: str, seeds: int = TUNE_SEEDS, grid: Sequence[float] = LR_GRID,
                device: str | torch.device = "cpu") -> list[float]:
    """The tuning score of every lr of `grid` for baseline `kind` on `problem`'s tuning seeds (one batched rollout)."""
    ids = list(range(TUNE_FIRST_SEED, TUNE_FIRST_SEED + seeds))
    task = problem.sample(ids * len(grid), device=device)
    lr = torch.tensor(grid, dtype=torch.float32, device=device).repeat_interleave(seeds)
    traj = trajectory(problem, make(kind, lr), task, problem.steps, every=problem.steps)  # the ends only
    final, first = traj.loss[-1].view(len(grid), seeds), traj.loss[0].view(len(grid), seeds)
    return [_score(f, s) for f, s in zip(final, first)]


def _best(grid: Sequence[float], scores: Sequence[float]) -> float:
    return grid[min(range(len(grid)), key=lambda i: (scores[i], i))]


def tune(problem: Problem, kind: str, seeds: int = TUNE_SEEDS, grid: Sequence[float] = LR_GRID,
         device: str | torch.device = "cpu") -> float:
    """The lr of `grid` with the best tuning score for baseline `kind` on `problem`'s tuning seeds."""
    return _best(grid, grid_scores(problem, kind, seeds, grid, device))


def global_lr(problems: Sequence[Problem], kind: str = "adam", seeds: int = TUNE_SEEDS,
              grid: Sequence[float] = LR_GRID, device: str | torch.device = "cpu") -> float:
    """The one lr of `grid` best for baseline `kind` across `problems`: the lowest mean over problems of the tuning
    score (+inf where it diverges on any problem). A learned rule's nominal lr is chosen so, on its meta-training
    problems."""
    per = [grid_scores(p, kind, seeds, grid, device) for p in problems]
    return _best(grid, [sum(s[i] for s in per) / len(per) for i in range(len(grid))])


def _cache_file(cache: Path, problem: Problem, seeds: int, tune_seeds: int) -> Path:
    evaluation = [] if problem.kind == "regression" else [EVAL_SAMPLES]  # what a mini-batch problem reports
    key = json.dumps([problem.to_dict(), seeds, tune_seeds, LR_GRID, SPEEDUP_FACTOR, BASELINES, *evaluation])
    return cache / f"{problem.name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.safetensors"


def _baselines(problem: Problem, task: object, seeds: int, tune_seeds: int, device: str | torch.device
               ) -> tuple[dict[str, Trajectory], dict[str, float]]:
    trajs, lrs = {}, {}
    for kind in BASELINES:
        lrs[kind] = tune(problem, kind, tune_seeds, device=device)
        lr = torch.full((seeds,), lrs[kind], device=device)
        steps = problem.steps * (SPEEDUP_FACTOR if kind == "adam" else 1)
        trajs[kind] = trajectory(problem, make(kind, lr), task, steps)
    return trajs, lrs


def baselines(problem: Problem, task: object, seeds: int, tune_seeds: int, device: str | torch.device,
              cache: Path | None = None) -> tuple[dict[str, Trajectory], dict[str, float]]:
    """Tuned baselines' trajectories and lrs, read from / written to `cache` (safetensors, keyed by the problem,
    the seeds, the grid) when given. Only all-finite results are cached (NaN never reaches the disk); others are
    recomputed each time."""
    path = _cache_file(cache, problem, seeds, tune_seeds) if cache is not None else None
    if path is not None and path.is_file():
        tensors, meta = checkpoints.read(path)
        trajs = {k: Trajectory(tensors[f"{k}.loss"].to(device), tensors[f"{k}.grad_norm_sq"].to(device),
                               tensors[f"{k}.seconds"]) for k in BASELINES}
        return trajs, {k: float(meta["lrs"][k]) for k in BASELINES}
    trajs, lrs = _baselines(problem, task, seeds, tune_seeds, device)
    if path is not None:
        tensors = {f"{k}.{f}": getattr(t, f) for k, t in trajs.items() for f in ("loss", "grad_norm_sq", "seconds")}
        if all(bool(torch.isfinite(v).all()) for v in tensors.values()):
            checkpoints.save(path, tensors, {"kind": "bench_baselines", "problem": problem.to_dict(), "lrs": lrs})
    return trajs, lrs


def run_problem(problem: Problem, learned: Sequence[Method], seeds: int = SEEDS, tune_seeds: int = TUNE_SEEDS,
                device: str | torch.device = "cpu", cache: Path | None = None) -> ProblemRun:
    """Tune and run every baseline (or read them from `cache`), then every learned method for the problem's
    horizon (which `rollout` tells methods with progress features)."""
    task = problem.sample(range(REPORT_FIRST_SEED, REPORT_FIRST_SEED + seeds), device=device)
    trajs, lrs = baselines(problem, task, seeds, tune_seeds, device, cache)
    for method in learned:
        trajs[method.name] = trajectory(problem, method, task, problem.steps)
    return ProblemRun(problem, trajs, lrs)


def run_suite(problems: Sequence[Problem], learned: Sequence[Method], seeds: int = SEEDS,
              tune_seeds: int = TUNE_SEEDS, device: str | torch.device = "cpu", progress: bool = True,
              cache: Path | None = None) -> list[ProblemRun]:
    return [run_problem(p, learned, seeds, tune_seeds, device, cache)
            for p in tqdm(problems, desc="bench", unit="problem", disable=not progress)]
