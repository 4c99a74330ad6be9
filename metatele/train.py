"""Meta-train a learned method from a config into a checkpoint directory: the composition root that wires the
config's parts (family, spec, trainer settings) to the outer loop (`metatele.outer`: trainer, distributed,
log, held-out evaluation), checkpoints and signals."""
from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from metatele import checkpoints, checks, config
from metatele.config import TrainConfig
from metatele.errors import (CheckpointError, ConfigError, DistributedError, MetateleError, NonFiniteError, TrainStateError,
                             TrainStateExistsError)
from metatele.io import OutputLock, check_output_dir, clean_stray_temps, finite_or_none
from metatele.learned import MetaOptimizer, build as build_method
from metatele.outer import distributed
from metatele.outer.heldout import HeldOut
from metatele.outer.pes import batch_step
from metatele.outer.log import TrainLog
from metatele.outer.trainer import Progress, meta_lr, meta_train, windows
from metatele.signals import stop_on_signals
from metatele.tasks import TaskFamily
from metatele.tasks.base import TaskBatch
from metatele.tasks.seeds import train_seeds

__all__ = ["Run", "build", "restore", "start", "save", "run", "rank_tasks"]


@dataclass
class Run:
    """A meta-training run: its config, meta-optimizer, outer optimizer and progress."""

    cfg: TrainConfig
    model: MetaOptimizer
    opt: torch.optim.Adam
    progress: Progress
    interrupted: bool = False
    stop_signal: int | None = None  # the signal that interrupted it (SIGINT or SIGTERM)
    rank: int = 0  # this process's rank in a distributed run (rank 0 alone logs and writes)

    @property
    def trajectories_seen(self) -> int:
        t = self.cfg.trainer
        return min(self.progress.batches_done * t.batch, t.trajectories)


def build(cfg: TrainConfig, device: str | torch.device = "cpu", *, warm: bool = True) -> Run:
    """A fresh meta-optimizer, initialized from cfg.seed without touching the global RNG, then (if `warm` and the
    config's `init` names a checkpoint) from that checkpoint (`checkpoints.warm_start`), and its Adam."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.trainer.seed)
        model = build_method(cfg.spec)
    if warm and cfg.keys.init:
        init = cfg.keys.init
        try:
            source = (checkpoints.load_pretrained(init) if init in checkpoints.shipped_names()
                      else checkpoints.load_model(init))
            checkpoints.warm_start(model, source, init)
        except CheckpointError as e:
            raise ConfigError(f"init: {e}", params=("init",)) from None
    model = model.to(device)
    return Run(cfg, model, meta_optimizer(model, cfg.trainer.meta_lr), Progress())


def meta_optimizer(model: MetaOptimizer, lr: float) -> torch.optim.Adam:
    """Adam over the meta-parameters: the fused kernel where this torch has it (CPU since 2.4; 4-5× faster
    than the default for millions of parameters), the default otherwise."""
    try:
        return torch.optim.Adam(model.parameters(), lr=lr, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(model.parameters(), lr=lr)


def restore(path: Path, device: str | torch.device = "cpu", cfg: TrainConfig | None = None) -> Run:
    """The run saved in a training-state file (read once). cfg: the config to continue with, which must equal
    the stored one (TrainStateError naming the keys that differ); None: the stored config (validated)."""
    tensors, meta = checkpoints.read(path)
    if meta.get("kind") != "train_state":
        raise TrainStateError(f"{path} is not a training state")
    try:
        stored = meta["config"]
        if not isinstance(stored, dict):
            raise TypeError("config is not a JSON object")
        if cfg is None:
            cfg = config.load(**stored)
        else:
            new, old = cfg.to_dict(), {**asdict(config.ConfigKeys()), **stored}
            differ = [k for k in new if old[k] != new[k]] + sorted(old.keys() - new.keys())
            if differ:
                raise TrainStateError(f"the config differs from the training state's in {', '.join(differ)}")
        progress = _progress(meta, cfg)
    except (KeyError, TypeError, ValueError, ConfigError) as e:
        raise TrainStateError(f"{path}: the training state's metadata is invalid ({e})") from None
    run_ = build(cfg, device, warm=False)  # the state holds every meta-parameter
    run_.progress = progress
    if cfg.trainer.meta_lr_final != 1.0 and progress.batches_done:  # the lr the schedule gave the last batch
        for group in run_.opt.param_groups:
            group["lr"] = meta_lr(cfg.trainer, progress.batches_done - 1, cfg.trainer.n_batches)
    checkpoints.restore_train_state(tensors, meta, run_.model, run_.opt, path)
    return run_


def _progress(meta: dict[str, Any], cfg: TrainConfig) -> Progress:
    """The progress in (untrusted) training-state metadata: counters in range (at most one skipped window per
    batch), the held-out history a list of {name: finite number or null}."""
    done = checks.integer("batches_done", meta["batches_done"], 0, cfg.trainer.n_batches)
    skipped = checks.integer("skipped_windows", meta["skipped_windows"], 0, done)
    history = meta.get("history", [])
    if not (isinstance(history, list) and all(isinstance(h, dict) and all(
            isinstance(k, str) and _finite_or_null(v) for k, v in h.items()) for h in history)):
        raise ValueError("history must be a list of {name: finite number or null}")
    return Progress(done, skipped, history)


def _finite_or_null(v: Any) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))


def start(cfg: TrainConfig, out: Path, *, resume: bool = False, overwrite: bool = False,
          device: str | torch.device = "cpu") -> Run:
    """The run to continue or to begin in `out`, never silently replacing what is there: `resume` needs a
    training state there (with an equal config); a fresh run needs a directory without checkpoints, unless
    `overwrite` (then they are replaced at the first save)."""
    state = out / checkpoints.STATE_FILE
    if resume:
        if not state.exists():
            raise TrainStateError(f"{out} holds no training state ({checkpoints.STATE_FILE}) to resume")
        return restore(state, device, cfg)
    found = [f for f in (checkpoints.STATE_FILE, checkpoints.MODEL_FILE) if (out / f).exists()]
    if found and not overwrite:
        raise TrainStateExistsError(f"{out} already holds {' and '.join(found)}")
    return build(cfg, device)


def _check_finite(run_: Run, out: Path) -> None:
    """Stop with NonFiniteError as soon as a meta-parameter is NaN or inf. Nothing more is saved, so `out`
    keeps the last (finite) checkpoint."""
    params = dict(run_.model.named_parameters())
    if bool(torch.stack([torch.isfinite(p).all() for p in params.values()]).all()):
        return
    bad = next(n for n, p in params.items() if not bool(torch.isfinite(p).all()))
    kept = (f"{out} keeps its last finite checkpoint" if (out / checkpoints.STATE_FILE).exists()
            else "nothing was saved")
    raise NonFiniteError(f"meta-parameters became non-finite in batch {run_.progress.batches_done} ({bad} holds NaN "
                         f"or inf); training stopped and {kept} (try a smaller meta_lr or clip)")


def save(run_: Run, out: Path) -> None:
    """Write the resumable state, then the deployable model (both atomically)."""
    p, cfg = run_.progress, run_.cfg.to_dict()
    checkpoints.save_train_state(out / checkpoints.STATE_FILE, run_.model, run_.opt, {
        "spec": run_.model.spec.to_dict(), "config": cfg,
        "batches_done": p.batches_done, "trajectories_seen": run_.trajectories_seen,
        "skipped_windows": p.skipped_windows, "history": p.history})
    checkpoints.save_model(out / checkpoints.MODEL_FILE, run_.model, config=cfg, family=run_.cfg.family.to_dict(),
                           trajectories_seen=run_.trajectories_seen, history=p.history)


def rank_tasks(family: TaskFamily, seeds: list[int], comm: distributed.Solo, device: str | torch.device = "cpu"
               ) -> TaskBatch:
    """This rank's contiguous slice of the batch of tasks `seeds` (all of them in one process). Every rank samples
    from the family's member for the batch's first seed (a mixture draws one shape and law per batch)."""
    offset, mine = comm.share(len(seeds))
    return family.member(seeds[0]).sample(seeds[offset:offset + mine], device=device)


def run(cfg: TrainConfig, out: str | Path, *, resume: bool = False, overwrite: bool = False,
        device: str | torch.device = "cpu", logdir: str | Path | None = None, progress: bool = True,
        max_batches: int | None = None, names: tuple[str, str] = ("output directory", "log directory")) -> Run:
    """Meta-train per cfg, checkpointing into directory `out` and logging to TensorBoard `logdir`.

    resume: continue the training state in `out` (its config must equal cfg); overwrite: start afresh even
    if `out` holds checkpoints (see `start`). max_batches: stop (and save) after this many batches in this
    call; a later resume continues. The first SIGINT/SIGTERM stops after the current batch and saves
    (`Run.interrupted`, `Run.stop_signal`). Both directories are checked before any work (errors call them
    `names`, which a front end may set to its options); `out` is locked
    against a second training for the duration, and stray temporary files there are removed.

    Under torchrun every rank calls this and becomes one rank of a distributed run
    (`metatele.outer.distributed`): same result up to float summation order; rank 0 locks, logs and writes,
    and a refusal on any rank stops all of them before any work.
    """
    out = Path(out)
    check_output_dir(out, names[0])
    if logdir is not None:
        check_output_dir(Path(logdir), names[1])
    with distributed.from_env(device) as comm, contextlib.ExitStack() as held:
        error: MetateleError | None = None
        try:
            comm.check(cfg.trainer)
            if comm.rank == 0:
                held.enter_context(OutputLock(out))
                clean_stray_temps(out)
            run_ = start(cfg, out, resume=resume, overwrite=overwrite, device=comm.device)
        except MetateleError as e:
            error = e
        if not comm.all_finite(error is None):
            comm.failing_together()
            raise error or DistributedError("another rank refused to start (its message says why)")
        run_.progress, run_.rank = comm.sync(run_.model, run_.opt, run_.progress), comm.rank
        return _train(run_, out, comm, logdir, progress, max_batches)


def _train(run_: Run, out: Path, comm: distributed.Solo, logdir: str | Path | None, progress: bool,
           max_batches: int | None) -> Run:
    settings, family, device = run_.cfg.trainer, run_.cfg.family, comm.device
    heldout = HeldOut(family, settings.eval_tasks, settings.steps, device)
    n_batches = settings.n_batches

    def sample(first: int, count: int) -> TaskBatch:
        return rank_tasks(family, train_seeds(settings.seed, first, count), comm, device)

    with TrainLog(logdir if comm.rank == 0 else None, n_batches, run_.progress.batches_done,
                  progress and comm.rank == 0) as log, stop_on_signals() as flag:
        stop = comm.stop(flag)

        def after_batch(p: Progress, stats: dict[str, float], size: int) -> None:
            _check_finite(run_, out)
            log.batch(stats, size * settings.steps, run_.trajectories_seen, p.skipped_windows)
            if settings.eval_every and (p.batches_done % settings.eval_every == 0 or p.batches_done == n_batches):
                values = heldout(run_.model)
                p.history.append({"trajectories": run_.trajectories_seen, **finite_or_none(values)})
                log.heldout(values, run_.trajectories_seen)
            if settings.ckpt_every and p.batches_done % settings.ckpt_every == 0:
                save(run_, out)

        def after_window() -> None:
            log.window(1 / windows(settings, run_.progress.batches_done))

        meta_train(settings, run_.model, run_.opt, run_.progress, sample=sample, on_window=after_window,
                   after_batch=comm.batch_callback(after_batch), stop=stop, max_batches=max_batches, reducer=comm,
                   step=batch_step(settings))
        comm.on_rank0(save, run_, out)
        run_.interrupted, run_.stop_signal = stop(), stop.signum
    return run_
