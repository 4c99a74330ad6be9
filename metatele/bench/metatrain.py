"""Meta-train an `AdafacOptimizer` on the suite's meta-training problems, selecting the checkpoint on its
validation problems.

Each batch: a training problem drawn uniformly (seeded), B tasks from the training seed range, a horizon T drawn
log-uniformly in [min_steps, steps] (rounded to the unroll) and given to the optimizer's progress features, and
optionally parameter-scale and loss-scale augmentation (`Scaled`). The inner trajectory is cut into windows of
`unroll` steps; each window's mean log loss drives a meta-update, by truncated BPTT (`metatele.outer.trainer.train_batch`,
first-order by default) or by PES (`metatele.outer.pes`, cfg.estimator). Every `eval_every` batches the optimizer runs the
validation problems on their selection seeds; the checkpoint with the lowest validation score (mean over problems
of the mean log10 final loss; +inf if a run diverged) is the one saved — not the one with the lowest meta-loss.
Given tuned Adam's results on the same runs, each check also scores the suite's criterion (`iqm_vs_adam`), the
measure of time to quality (benchmarks/time_to_quality.py --suite).
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metatele import checkpoints, checks
from metatele.io import atomic_write_csv
from metatele.bench.baselines import make
from metatele.bench.problems import SELECT_FIRST_SEED, Problem, split
from metatele.bench.run import trajectory, tune
from metatele.bench.scores import iqm, log_ratio
from metatele.errors import ConfigError, TrainStateError, TrainStateExistsError
from metatele.learned import build, spec_from_dict
from metatele.learned.adafac import AdafacSpec
from metatele.methods.base import Method
from metatele.outer.settings import TrainerSettings
from metatele.outer.pes import batch_step
from metatele.tasks.base import Batch, TaskBatch, TeleportData, loss_and_grad
from metatele.tasks.seeds import train_seeds

__all__ = ["MetaTrainConfig", "Scaled", "validation_runs", "validation_score", "tuned_adam_finals", "iqm_vs_adam",
           "meta_train", "resumed_config"]


@dataclass
class MetaTrainConfig:
    """Settings of one meta-training run; the truncated-BPTT ones become a `TrainerSettings` (`settings`)."""

    spec: AdafacSpec = field(default_factory=lambda: AdafacSpec("adafac"))
    steps: int = 200              # longest inner horizon
    min_steps: int = 50           # shortest (log-uniform in between)
    unroll: int = 10
    batch: int = 8
    meta_lr: float = 3e-3         # the MLP's meta lr
    scalar_lr: float = 1e-2       # the global scalars' (log_gain, fan_power, log_mix): lr must move by ×10–100
    gate_lr: float | None = None  # adafac-tele's teleport gate's (None: meta_lr)
    clip: float = 1.0
    meta_loss: str = "log"
    loss_growth: float = 1.0
    loss_cap: float = 10.0        # freeze a task once its loss exceeds 10× its initial loss
    second_order: bool = False
    estimator: str = "tbptt"      # or "pes" (metatele.outer.pes)
    particles: int = 8
    sigma: float = 0.01
    augment: bool = True          # parameter scale e^U(log .1, log 10) per tensor, loss scale e^U(log 1e-3, log 1e3)
    seed: int = 0
    minutes: float = 60.0         # wall-clock budget
    max_batches: int = 10**6
    eval_every: int = 10
    select_seeds: int = 4
    val_steps: int | None = None  # validation horizon (None: each validation problem's own)
    stop_at_adam: bool = False    # stop once the validation IQM beats tuned Adam (time to quality)
    average: float = 0.0          # validate and save an average of the meta-parameters, EMA decay `average` (0: off)
    init: str | None = None       # start from this adafac checkpoint: all of it if its spec is the run's, else its `net`

    @property
    def settings(self) -> TrainerSettings:
        return TrainerSettings(steps=self.steps, min_steps=self.min_steps, unroll=self.unroll, batch=self.batch,
                               meta_lr=self.meta_lr, meta_loss=self.meta_loss, loss_growth=self.loss_growth,
                               clip=self.clip, loss_cap=self.loss_cap, second_order=self.second_order, seed=self.seed,
                               estimator=self.estimator, particles=self.particles, sigma=self.sigma)


@dataclass
class Scaled:
    """Augmentation: the optimizer sees weights w with true weights c_m·w (c (B,) per tensor) and the loss × s (B,).
    Positive scalars per layer keep a bias-free LeakyReLU MLP's GL teleport exact."""

    inner: Any
    scale: list[torch.Tensor]
    loss_scale: torch.Tensor

    def __getattr__(self, name: str) -> Any:  # seeds, activation, symmetry, widths, data, teleport_data
        return getattr(self.inner, name)

    def _true(self, weights: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [c.view(-1, *([1] * (w.dim() - 1))) * w for c, w in zip(self.scale, weights)]

    def init_weights(self) -> list[torch.Tensor]:
        return [w / c.view(-1, *([1] * (w.dim() - 1))) for c, w in zip(self.scale, self.inner.init_weights())]

    def data(self, step: int) -> Batch:
        return self.inner.data(step)

    def teleport_data(self, step: int) -> TeleportData:
        return self.inner.teleport_data(step)

    def loss(self, weights: Sequence[torch.Tensor], data: Batch) -> torch.Tensor:
        return self.loss_scale * self.inner.loss(self._true(weights), data)

    def loss_and_grad(self, weights: Sequence[torch.Tensor], data: Batch, *, create_graph: bool = False,
                      retain_graph: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return loss_and_grad(self.loss, weights, data, create_graph=create_graph, retain_graph=retain_graph)


def _log_uniform(gen: torch.Generator, lo: float, hi: float, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * torch.rand(shape, generator=gen))


def validation_runs(method: Method, problems: Sequence[Problem], seeds: int,
                    steps: int | None = None) -> list[torch.Tensor]:
    """Per problem, the method's losses (steps+1, seeds) on the selection seeds, over `steps` (None: the problem's
    own horizon)."""
    return [trajectory(p, method, p.sample(range(SELECT_FIRST_SEED, SELECT_FIRST_SEED + seeds)),
                       steps or p.steps).loss for p in problems]


def validation_score(runs: Sequence[torch.Tensor]) -> float:
    """Mean over problems of the mean log10 final loss; +inf if any run diverged (non-finite, or above its start)."""
    scores = []
    for loss in runs:
        if not bool((torch.isfinite(loss).all(0) & (loss[-1] <= loss[0])).all()):
            return math.inf
        scores.append(float(loss[-1].double().clamp_min(1e-300).log10().mean()))
    return sum(scores) / len(scores)


def tuned_adam_finals(problems: Sequence[Problem], seeds: int, steps: int | None = None) -> list[torch.Tensor]:
    """Per problem, Adam's final losses (seeds,) on the selection seeds after `steps` (None: the problem's horizon),
    its lr tuned at the problem's horizon on the tuning seeds (`metatele.bench.run.tune`): the reference of
    `iqm_vs_adam`."""
    out = []
    for p in problems:
        lr = torch.full((seeds,), tune(p, "adam"))
        out.append(validation_runs(make("adam", lr), [p], seeds, steps)[0][-1])
    return out


def iqm_vs_adam(runs: Sequence[torch.Tensor], adam_finals: Sequence[torch.Tensor]) -> float:
    """The suite's criterion on the validation problems: the IQM over all runs of log10(L_adam / L) at the problems'
    horizons (`scores.log_ratio`); > 0 means the method beats tuned Adam on the typical run."""
    return iqm(np.concatenate([log_ratio(r[-1], a).numpy() for r, a in zip(runs, adam_finals)]))


@contextmanager
def _averaged(method: Method, average: list[torch.Tensor] | None) -> Iterator[None]:
    """Within the block, `method`'s parameters hold `average` (the EMA of `meta_train`); restored after."""
    if average is None:
        yield
        return
    params = list(method.parameters())
    current = [q.detach().clone() for q in params]
    with torch.no_grad():
        for q, a in zip(params, average):
            q.copy_(a)
    try:
        yield
    finally:
        with torch.no_grad():
            for q, c in zip(params, current):
                q.copy_(c)


ROW_FLOATS = ("minutes", "meta_loss", "skipped", "log_gain", "fan_power", "validation", "iqm_vs_adam")


def _config_json(cfg: MetaTrainConfig) -> dict[str, Any]:
    """The settings a resumed run must share with its training state (the budget may grow); val_steps only when
    set (states written before the field have no such key)."""
    return json.loads(json.dumps({"spec": vars(cfg.spec), **{
        k: v for k, v in vars(cfg).items()
        if k not in ("spec", "minutes", "max_batches") and not (k == "val_steps" and v is None)}}))


def resumed_config(out: Path, minutes: float, max_batches: int) -> MetaTrainConfig:
    """The settings of the run whose training state is in `out`, read from the state's (untrusted) metadata and
    type-checked, with a new budget: what `meta_train(..., resume=True)` continues. TrainStateError if there is no
    state or its settings are malformed."""
    path = out / checkpoints.STATE_FILE
    if not path.exists():
        raise TrainStateError(f"{out} holds no training state ({checkpoints.STATE_FILE}) to resume")
    stored = checkpoints.read(path)[1].get("config")
    try:
        spec = spec_from_dict(dict(stored["spec"]))
        if not isinstance(spec, AdafacSpec):
            raise TypeError(f"spec {spec.method!r} is not an adafac rule")
        unknown = set(stored) - {f.name for f in fields(MetaTrainConfig)}
        if unknown:
            raise KeyError(f"unknown settings {sorted(unknown)}")
        values: dict[str, Any] = {}
        for f in fields(MetaTrainConfig):
            if f.name in ("spec", "minutes", "max_batches") or (f.name == "val_steps" and f.name not in stored):
                continue
            v, kind = stored[f.name], f.type.split(" | ")  # e.g. "float | None"
            ok = (v is None and "None" in kind) or (isinstance(v, bool) and "bool" in kind) or (
                not isinstance(v, bool) and ((isinstance(v, int) and ("int" in kind or "float" in kind))
                                             or (isinstance(v, float) and "float" in kind)
                                             or (isinstance(v, str) and "str" in kind)))
            if not ok:
                raise TypeError(f"{f.name} = {v!r}")
            values[f.name] = v
    except (KeyError, TypeError, ValueError) as e:
        raise TrainStateError(f"{path}: the training state's settings are invalid ({e})") from None
    return replace(MetaTrainConfig(spec=spec, **values), minutes=minutes, max_batches=max_batches)


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _save_state(path: Path, method: Method, opt: torch.optim.Optimizer, cfg: MetaTrainConfig, gen: torch.Generator,
                average: list[torch.Tensor] | None, progress: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """Write the resumable state: meta-parameters, their Adam state and average as tensors; the sampler's generator,
    the progress and the log (NaN as null) as JSON."""
    checkpoints.save_train_state(path, method, opt, {
        "config": _config_json(cfg), "generator": gen.get_state().tolist(), **progress,
        "rows": [{k: (_finite_or_none(v) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]},
        extra={f"average.{i}": a for i, a in enumerate(average or [])})


def _restore_state(path: Path, method: Method, opt: torch.optim.Optimizer, cfg: MetaTrainConfig, gen: torch.Generator,
                   average: list[torch.Tensor] | None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Load `_save_state`'s file into method, opt, gen and average (in place), checking its metadata as untrusted
    input; returns (progress, rows). TrainStateError if it is not this run's or is malformed."""
    if not path.exists():
        raise TrainStateError(f"{path.parent} holds no training state ({checkpoints.STATE_FILE}) to resume")
    tensors, meta = checkpoints.read(path)
    if meta.get("config") != _config_json(cfg):
        stored = meta.get("config") if isinstance(meta.get("config"), dict) else {}
        differ = sorted(k for k in _config_json(cfg) if stored.get(k) != _config_json(cfg)[k])
        raise TrainStateError(f"{path}: the run's settings differ from the training state's in "
                              f"{', '.join(differ) or 'its layout'}")
    extra = checkpoints.restore_train_state(tensors, meta, method, opt, path)
    want = {f"average.{i}": q for i, q in enumerate(method.parameters())} if average is not None else {}
    if extra.keys() != want.keys() or any(extra[k].shape != q.shape for k, q in want.items()):
        raise TrainStateError(f"{path}: its averaged parameters do not match the run (average={cfg.average})")
    try:
        progress = {k: meta[k] for k in ("batches", "minutes", "best", "best_batch", "untrained", "reached")}
        state, rows = meta["generator"], meta["rows"]
        ok = (isinstance(progress["batches"], int) and progress["batches"] >= 0
              and isinstance(progress["best_batch"], int) and 0 <= progress["best_batch"] <= progress["batches"]
              and isinstance(progress["minutes"], (int, float)) and progress["minutes"] >= 0
              and all(v is None or isinstance(v, (int, float)) for v in (progress["best"], progress["untrained"]))
              and (progress["reached"] is None or (isinstance(progress["reached"], list)
                                                   and len(progress["reached"]) == 2
                                                   and all(isinstance(v, (int, float)) for v in progress["reached"])))
              and isinstance(state, list) and len(state) == len(gen.get_state())
              and all(isinstance(v, int) and 0 <= v < 256 for v in state)
              and isinstance(rows, list) and len(rows) == progress["batches"]
              and all(isinstance(r, dict) and r.get("batch") == i + 1 and isinstance(r.get("problem"), str)
                      and isinstance(r.get("steps"), int)
                      and all(r.get(k) is None or isinstance(r.get(k), (int, float)) for k in ROW_FLOATS)
                      for i, r in enumerate(rows)))
    except (KeyError, TypeError):
        ok = False
    if not ok:
        raise TrainStateError(f"{path}: the training state's progress metadata is invalid")
    gen.set_state(torch.tensor(state, dtype=torch.uint8))
    for a, t in zip(average or [], (extra[f"average.{i}"] for i in range(len(extra)))):
        a.copy_(t.to(a.dtype))
    for key in ("best", "untrained"):
        progress[key] = math.inf if progress[key] is None else float(progress[key])
    rows = [{k: (math.nan if v is None and k in ROW_FLOATS else v) for k, v in r.items()} for r in rows]
    return progress, rows


def meta_train(cfg: MetaTrainConfig, out: Path, log: bool = True,
               adam_finals: Sequence[torch.Tensor] | None = None, resume: bool = False,
               started: Callable[[], None] | None = None) -> dict[str, Any]:
    """Train per cfg for cfg.minutes (or max_batches), writing out/model.safetensors (best on validation),
    out/train_log.csv and, at every validation, the resumable out/train_state.safetensors; returns a summary.
    With `resume`, continue that state (same settings; the budget, minutes and batches counted from the run's
    start, may grow): the continued run is the same as one that never stopped. Without it, a folder that already
    holds a checkpoint or a state is refused (TrainStateExistsError). With `adam_finals` (`tuned_adam_finals` of
    the validation problems), every
    validation also logs `iqm_vs_adam`, and the summary gives the first batch and minute at which it is > 0
    (`reached_batch`, `reached_minutes`: 0 if the untrained rule is there; None if never); with cfg.stop_at_adam,
    training stops there. With cfg.init the run starts from that adafac checkpoint: all of it when its spec is the
    run's (a horizon curriculum continuing a rule, a teleporting twin's gate included), else its update rule (`net`),
    so a teleporting twin can start from the same rule as its twin (its gate fresh). With cfg.val_steps the
    validation runs (and `adam_finals`, which must match) have that horizon; with cfg.average, the
    validation and the saved checkpoint use the exponential moving average of the meta-parameters (Polyak
    averaging), the raw ones keep training. `started` is called once the folder is accepted (to write a config)."""
    if cfg.val_steps is not None:
        checks.integer("val_steps", cfg.val_steps, 1, 10**6)
    state_path = out / checkpoints.STATE_FILE
    if not resume and ((out / checkpoints.MODEL_FILE).exists() or state_path.exists()):
        raise TrainStateExistsError(f"{out} already holds a meta-training run; resume it, or choose another folder")
    out.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        method = build(cfg.spec)
    if cfg.init is not None:
        source = checkpoints.load_model(cfg.init)
        own = (cfg.spec.hidden, cfg.spec.mix, cfg.spec.nominal_lr)
        theirs = tuple(getattr(source.spec, k, None) for k in ("hidden", "mix", "nominal_lr"))
        if not isinstance(source.spec, AdafacSpec) or theirs != own:
            raise ConfigError(f"init {cfg.init}: its update rule (hidden, mix, nominal_lr) = {theirs} is not the "
                              f"run's {own}")
        if source.spec == cfg.spec:  # the same rule (a teleporting twin's gate included): all of it
            method.load_state_dict(source.state_dict())
        else:
            method.net.load_state_dict(source.net.state_dict())
    scalars = [method.net.log_gain, method.net.fan_power, method.net.log_mix]
    gate = list(method.gate.parameters()) if hasattr(method, "gate") else []
    rest = [p for p in method.parameters() if all(p is not s for s in scalars + gate)]
    groups = [{"params": rest, "lr": cfg.meta_lr}, {"params": scalars, "lr": cfg.scalar_lr}]
    opt = torch.optim.Adam(groups + ([{"params": gate, "lr": cfg.gate_lr or cfg.meta_lr}] if gate else []))
    train_problems, val_problems = split("train"), split("validation")
    gen = torch.Generator().manual_seed(cfg.seed)
    average = [q.detach().clone() for q in method.parameters()] if cfg.average else None
    if resume:
        progress, rows = _restore_state(state_path, method, opt, cfg, gen, average)
        b, best, best_batch, untrained = progress["batches"], progress["best"], progress["best_batch"], \
            progress["untrained"]
        reached: tuple[int, float] | None = tuple(progress["reached"]) if progress["reached"] else None
        start = time.time() - 60 * progress["minutes"]
    else:
        start = time.time()
        runs = validation_runs(method, val_problems, cfg.select_seeds, cfg.val_steps)
        best, best_batch, rows, b = validation_score(runs), 0, [], 0
        untrained = best
        checkpoints.save_model(out / checkpoints.MODEL_FILE, method, batches=0, validation_score=best)
        reached = None
        if adam_finals is not None and iqm_vs_adam(runs, adam_finals) > 0:
            reached = (0, 0.0)  # the untrained rule already beats it
    if started is not None:
        started()

    def save_state() -> None:
        atomic_write_csv(out / "train_log.csv", rows)
        _save_state(state_path, method, opt, cfg, gen, average, {
            "batches": b, "minutes": (time.time() - start) / 60, "best": _finite_or_none(best),
            "best_batch": best_batch, "untrained": _finite_or_none(untrained),
            "reached": list(reached) if reached else None}, rows)

    while b < cfg.max_batches and time.time() - start < cfg.minutes * 60 and not (reached and cfg.stop_at_adam):
        problem = train_problems[int(torch.randint(len(train_problems), (), generator=gen))]
        u = float(torch.rand((), generator=gen))
        T = math.exp(math.log(cfg.min_steps) + u * (math.log(cfg.steps) - math.log(cfg.min_steps)))
        T = max(cfg.unroll, cfg.unroll * round(T / cfg.unroll))
        task: TaskBatch = problem.sample(train_seeds(cfg.seed, b * cfg.batch, cfg.batch))
        if cfg.augment:
            n = len(task.init_weights())
            task = Scaled(task, [_log_uniform(gen, 0.1, 10.0, (cfg.batch,)) for _ in range(n)],
                          _log_uniform(gen, 1e-3, 1e3, (cfg.batch,)))
        stats = batch_step(cfg.settings)(method, opt, task, cfg.settings, T)
        b += 1
        if average is not None:
            with torch.no_grad():
                for a, q in zip(average, method.parameters()):
                    a.lerp_(q.detach(), 1 - cfg.average)
        row = {"batch": b, "minutes": (time.time() - start) / 60, "problem": problem.name, "steps": T,
               "meta_loss": stats.get("meta_loss", math.nan), "skipped": stats["skipped"],
               "log_gain": float(method.net.log_gain.detach()), "fan_power": float(method.net.fan_power.detach()),
               "validation": math.nan, "iqm_vs_adam": math.nan}
        if b % cfg.eval_every == 0:
            with _averaged(method, average):
                runs = validation_runs(method, val_problems, cfg.select_seeds, cfg.val_steps)
                score = row["validation"] = validation_score(runs)
                if score < best:
                    best, best_batch = score, b
                    checkpoints.save_model(out / checkpoints.MODEL_FILE, method, batches=b, validation_score=score)
            if adam_finals is not None:
                row["iqm_vs_adam"] = iqm_vs_adam(runs, adam_finals)
                if reached is None and row["iqm_vs_adam"] > 0:
                    reached = (b, (time.time() - start) / 60)
        rows.append(row)
        if log:
            print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
        if b % cfg.eval_every == 0:
            save_state()
    save_state()
    return {"batches": b, "minutes": (time.time() - start) / 60, "best_batch": best_batch,
            "best_validation": best, "untrained_validation": untrained,
            "reached_batch": reached[0] if reached else None, "reached_minutes": reached[1] if reached else None}
