"""Meta-train a learned method from a config into a checkpoint directory: the composition root that wires
the trainer (`metatele.learned.trainer`) to held-out evaluation, logging, checkpoints and signals."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from metatele import checkpoints, config
from metatele.config import TrainConfig
from metatele.errors import ConfigError, TrainStateError, TrainStateExistsError
from metatele.evaluation.heldout import HeldOut
from metatele.learned import distributed
from metatele.learned.log import TrainLog
from metatele.learned.meta_optimizer import MetaOptimizer
from metatele.learned.trainer import Progress, meta_train
from metatele.signals import stop_on_signals
from metatele.tasks import MixtureFamily, TaskFamily
from metatele.tasks.base import TaskBatch
from metatele.tasks.seeds import train_seeds

__all__ = ["Run", "build", "restore", "save", "run", "rank_tasks"]


@dataclass
class Run:
    """A meta-training run: its config, meta-optimizer, outer optimizer and progress."""

    cfg: TrainConfig
    model: MetaOptimizer
    opt: torch.optim.Adam
    progress: Progress
    interrupted: bool = False
    rank: int = 0  # this process's rank in a distributed run (rank 0 alone logs and writes)

    @property
    def trajectories_seen(self) -> int:
        return min(self.progress.batches_done * self.cfg.batch, self.cfg.trajectories)


def build(cfg: TrainConfig, device: str | torch.device = "cpu") -> Run:
    """A fresh meta-optimizer, initialized from cfg.seed without touching the global RNG, and its Adam."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = MetaOptimizer(cfg.spec())
    model = model.to(device)
    return Run(cfg, model, meta_optimizer(model, cfg.meta_lr), Progress())


def meta_optimizer(model: MetaOptimizer, lr: float) -> torch.optim.Adam:
    """Adam over the meta-parameters: the fused kernel where this torch has it (CPU since 2.4; 4-5× faster
    than the default for millions of parameters), the default otherwise."""
    try:
        return torch.optim.Adam(model.parameters(), lr=lr, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(model.parameters(), lr=lr)


def restore(path: Path, device: str | torch.device = "cpu") -> Run:
    """The run saved in a training-state file (read once)."""
    tensors, meta = checkpoints.read(path)
    if meta.get("kind") != "train_state":
        raise TrainStateError(f"{path} is not a training state")
    try:
        cfg = config.load(**meta["config"])
        progress = Progress(int(meta["batches_done"]), int(meta["skipped_windows"]), list(meta.get("history", [])))
    except (KeyError, TypeError, ValueError, ConfigError) as e:
        raise TrainStateError(f"{path}: the training state's metadata is invalid ({e})") from None
    run_ = build(cfg, device)
    run_.progress = progress
    checkpoints.restore_train_state(tensors, meta, run_.model, run_.opt, path)
    return run_


def save(run_: Run, out: Path) -> None:
    """Write the resumable state, then the deployable model (both atomically)."""
    p, cfg = run_.progress, config.to_dict(run_.cfg)
    checkpoints.save_train_state(out / checkpoints.STATE_FILE, run_.model, run_.opt, {
        "spec": asdict(run_.model.spec), "config": cfg,
        "batches_done": p.batches_done, "trajectories_seen": run_.trajectories_seen,
        "skipped_windows": p.skipped_windows, "history": p.history})
    checkpoints.save_model(out / checkpoints.MODEL_FILE, run_.model, config=cfg, family=run_.cfg.family().to_dict(),
                           trajectories_seen=run_.trajectories_seen, history=p.history)


def rank_tasks(family: TaskFamily, seeds: list[int], comm: distributed.Solo, device: str | torch.device = "cpu"
               ) -> TaskBatch:
    """This rank's contiguous slice of the batch of tasks `seeds` (all of them in one process). A mixture draws
    one member (shape, law) per batch from the batch's first seed: every rank samples from that member."""
    offset, mine = comm.share(len(seeds))
    member = family.member(seeds[0]) if isinstance(family, MixtureFamily) else family
    return member.sample(seeds[offset:offset + mine], device=device)


def run(cfg: TrainConfig, out: str | Path, *, resume: bool = False, device: str | torch.device = "cpu",
        logdir: str | Path | None = None, progress: bool = True, max_batches: int | None = None) -> Run:
    """Meta-train per cfg, checkpointing into directory `out` and logging to TensorBoard `logdir`.

    resume: continue the training state in `out` (its config must equal cfg). max_batches: stop (and save)
    after this many batches in this call; a later resume continues. The first SIGINT/SIGTERM stops after
    the current batch and saves (`Run.interrupted`).

    Under torchrun every rank calls this and becomes one rank of a distributed run
    (`metatele.learned.distributed`): same result up to float summation order; rank 0 logs and writes.
    """
    with distributed.from_env(device) as comm:
        return _run(cfg, Path(out), comm, resume=resume, logdir=logdir, progress=progress, max_batches=max_batches)


def _run(cfg: TrainConfig, out: Path, comm: distributed.Solo, *, resume: bool, logdir: str | Path | None,
         progress: bool, max_batches: int | None) -> Run:
    comm.check(cfg)
    device = comm.device
    state = out / checkpoints.STATE_FILE
    if resume and state.exists():
        run_ = restore(state, device)
        old, new = config.to_dict(run_.cfg), config.to_dict(cfg)
        if old != new:
            raise TrainStateError(f"the config differs from the training state's in {', '.join(k for k in new if old[k] != new[k])}")
    elif not resume and state.exists():
        raise TrainStateExistsError(f"{out} already holds a training state; resume it or choose another output directory")
    else:
        run_ = build(cfg, device)
    run_.progress, run_.rank = comm.sync(run_.model, run_.opt, run_.progress), comm.rank
    family = cfg.family()
    heldout = HeldOut(family, cfg.eval_tasks, cfg.steps, device)
    n_batches = -(-cfg.trajectories // cfg.batch)

    def sample(first: int, count: int):
        return rank_tasks(family, train_seeds(cfg.seed, first, count), comm, device)

    with TrainLog(logdir if comm.rank == 0 else None, n_batches, run_.progress.batches_done,
                  progress and comm.rank == 0) as log, stop_on_signals() as flag:
        stop = comm.stop(flag)

        def after_batch(p: Progress, stats: dict[str, float], size: int) -> None:
            log.batch(stats, size * cfg.steps, run_.trajectories_seen, p.skipped_windows)
            if cfg.eval_every and (p.batches_done % cfg.eval_every == 0 or p.batches_done == n_batches):
                values = heldout(run_.model)
                p.history.append({"trajectories": run_.trajectories_seen, **values})
                log.heldout(values, run_.trajectories_seen)
            if cfg.ckpt_every and p.batches_done % cfg.ckpt_every == 0:
                save(run_, out)

        meta_train(cfg, run_.model, run_.opt, run_.progress, sample=sample,
                   after_batch=comm.batch_callback(after_batch), stop=stop, max_batches=max_batches, reducer=comm)
        comm.on_rank0(save, run_, out)
        run_.interrupted = stop()
    return run_
