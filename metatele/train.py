"""Outer trainer: truncated-BPTT meta-training of a MetaOptimizer over batched GD trajectories.

B trajectories (tasks from the training seed range) run in parallel. Each trajectory of `steps`
inner steps is cut into windows of `unroll` steps; after each window the meta-loss
(a weighted sum of the inner losses after each step, plain or log) is back-propagated into the
meta-optimizer, Adam takes a clipped step, and the weights and LSTM states are detached.
A window whose losses or meta-gradient are non-finite is skipped (no update), counted, and its
batch abandoned. Training state is checkpointed at batch boundaries, so resuming reproduces an
uninterrupted run bit for bit.
"""
from __future__ import annotations

import math
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from metatele import checkpoints, step, tasks
from metatele import config as config_mod
from metatele.config import TrainConfig
from metatele.errors import CheckpointError, ConfigError
from metatele.meta_optimizers import MetaOptimizer, MetaOptSpec
from metatele.symmetry import pinv_full_rank


def spec_from_config(cfg: TrainConfig) -> MetaOptSpec:
    return MetaOptSpec(method=cfg.method, widths=tuple(cfg.widths), hidden=cfg.hidden, preprocessing=cfg.preprocessing,
                       eps=cfg.eps, exact=cfg.exact, gate=cfg.gate, out_scale=cfg.out_scale)


@dataclass
class TrainState:
    cfg: TrainConfig
    model: MetaOptimizer
    opt: torch.optim.Adam
    batches_done: int = 0
    skipped_windows: int = 0
    history: list[dict[str, float]] = field(default_factory=list)  # held-out evaluations
    interrupted: bool = False

    @property
    def trajectories_seen(self) -> int:
        return min(self.batches_done * self.cfg.batch, self.cfg.trajectories)


def build(cfg: TrainConfig, device: str | torch.device = "cpu") -> TrainState:
    """A fresh meta-optimizer (initialized from cfg.seed) and its Adam optimizer."""
    torch.manual_seed(cfg.seed)
    model = MetaOptimizer(spec_from_config(cfg)).to(device)
    return TrainState(cfg, model, torch.optim.Adam(model.parameters(), lr=cfg.meta_lr))


def meta_loss(losses: torch.Tensor, kind: str, growth: float = 1.0) -> torch.Tensor:
    """losses (U, B) after each step of a window → scalar: Σ_t w_t ℓ(L_t), mean over B.
    ℓ = identity ("sum", the paper) or log ("log", scale-free); w_t ∝ growth^t with mean 1."""
    U = losses.shape[0]
    w = growth ** torch.arange(1, U + 1, dtype=losses.dtype, device=losses.device)
    w = w * (U / w.sum())
    values = losses.log() if kind == "log" else losses
    return (w[:, None] * values).sum(0).mean()


def unroll_window(model: MetaOptimizer, weights: list[torch.Tensor], mstate: Any, task: tasks.TaskBatch,
                  X_pinv: torch.Tensor, unroll: int, second_order: bool = True
                  ) -> tuple[torch.Tensor, list[torch.Tensor], Any, dict[str, list[float]]]:
    """Differentiably run `unroll` inner steps. Returns the losses after each step (unroll, B), the
    final weights and LSTM states (still attached to the graph) and logging statistics."""
    losses, stats = [], {"tele_eps": [], "lr": []}
    for t in range(unroll):
        res = step.inner_step(model, weights, mstate, task, X_pinv, differentiable=True, second_order=second_order)
        weights, mstate = res.weights, res.state
        if t > 0:
            losses.append(res.loss)
        if res.proposal.eps is not None:
            stats["tele_eps"].append(float(torch.stack([torch.as_tensor(e).detach().mean() for e in res.proposal.eps]).mean()))
        if res.proposal.lr is not None:
            stats["lr"].append(float(res.proposal.lr.detach().mean()))
    losses.append(tasks.loss(weights, task.X, task.Y))
    return torch.stack(losses), weights, mstate, stats


def train_batch(st: TrainState, task: tasks.TaskBatch) -> dict[str, float]:
    """Meta-train on one batch of trajectories (one meta-update per window); returns mean statistics."""
    cfg, model, opt = st.cfg, st.model, st.opt
    X_pinv = pinv_full_rank(task.X)
    weights, mstate = list(task.weights), model.init_state(task.weights)
    stats: dict[str, list[float]] = {"meta_loss": [], "grad_norm": [], "tele_eps": [], "lr": []}
    skipped = 0
    for _ in range(cfg.steps // cfg.unroll):
        L, weights, mstate, wstats = unroll_window(model, weights, mstate, task, X_pinv, cfg.unroll, cfg.second_order)
        for k, v in wstats.items():
            stats[k] += v
        ml = meta_loss(L, cfg.meta_loss, cfg.loss_growth)
        opt.zero_grad(set_to_none=True)
        gn = torch.tensor(float("nan"))
        if torch.isfinite(L).all():
            ml.backward()
            gn = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        if not torch.isfinite(gn):  # divergence: no update from this window, abandon the batch
            opt.zero_grad(set_to_none=True)
            skipped += 1
            break
        opt.step()
        stats["meta_loss"].append(float(ml.detach()))
        stats["grad_norm"].append(float(gn))
        weights = [w.detach() for w in weights]
        mstate = [tuple(s.detach() for s in st_) for st_ in mstate]
    st.batches_done += 1
    st.skipped_windows += skipped
    out = {k: sum(v) / len(v) for k, v in stats.items() if v}
    out["skipped"] = float(skipped)
    return out


def heldout_eval(model: MetaOptimizer, cfg: TrainConfig, device: str | torch.device) -> dict[str, float]:
    """Run the current meta-optimizer on validation tasks (never trained on) for cfg.steps steps."""
    from metatele.evaluate import summarize

    task = tasks.sample(range(tasks.VALID_FIRST_SEED, tasks.VALID_FIRST_SEED + cfg.eval_tasks),
                        cfg.widths, cfg.n, device=device)
    traj = step.run(model, task, cfg.steps)
    out = {}
    for s in sorted({min(20, cfg.steps), cfg.steps}):
        summ = summarize(traj.loss[s])
        out[f"log10_loss_mean_step{s}"] = summ["log10_loss_mean"]
        out[f"n_diverged_step{s}"] = summ["n_diverged"]
    return out


# --- checkpoints -------------------------------------------------------------------------------

def save_state(st: TrainState, out: Path) -> None:
    """Write the resumable state, then the deployable model (both atomically)."""
    tensors = {f"model.{k}": v for k, v in st.model.state_dict().items()}
    opt_sd = st.opt.state_dict()
    for i, s in opt_sd["state"].items():
        for k, v in s.items():
            tensors[f"adam.{i}.{k}"] = torch.as_tensor(v)
    meta = {"kind": "train_state", "spec": asdict(st.model.spec), "config": config_mod.to_dict(st.cfg),
            "batches_done": st.batches_done, "trajectories_seen": st.trajectories_seen,
            "skipped_windows": st.skipped_windows, "history": st.history,
            "adam_param_groups": opt_sd["param_groups"]}
    checkpoints.save(out / checkpoints.STATE_FILE, tensors, meta)
    checkpoints.save_meta_optimizer(out / checkpoints.MODEL_FILE, st.model, config=config_mod.to_dict(st.cfg),
                                    trajectories_seen=st.trajectories_seen, history=st.history)


def load_state(out: Path, device: str | torch.device = "cpu") -> TrainState:
    path = out / checkpoints.STATE_FILE
    tensors, meta = checkpoints.read(path)
    if meta.get("kind") != "train_state":
        raise CheckpointError(f"{path} is not a training state")
    cfg = config_mod.load(overrides=(), **meta["config"])
    st = build(cfg, device)
    model = checkpoints.load_meta_optimizer(path, device=device)
    st.model.load_state_dict(model.state_dict())
    state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("adam."):
            _, i, name = k.split(".", 2)
            state.setdefault(int(i), {})[name] = v.to(device) if name != "step" else v
    try:
        st.opt.load_state_dict({"state": state, "param_groups": meta["adam_param_groups"]})
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: optimizer state does not match the model ({e})") from None
    st.batches_done, st.skipped_windows = meta["batches_done"], meta["skipped_windows"]
    st.history = meta.get("history", [])
    return st


# --- the loop ----------------------------------------------------------------------------------

class _StopFlag:
    """First SIGINT: finish the current batch, save, stop. Second: abort at once."""

    def __init__(self) -> None:
        self.stop = False

    def __call__(self, signum: int, frame: Any) -> None:
        if self.stop:
            raise KeyboardInterrupt
        self.stop = True


def train(cfg: TrainConfig, out: str | Path, resume: bool = False, device: str | torch.device = "cpu",
          logdir: str | Path | None = None, progress: bool = True, max_batches: int | None = None) -> TrainState:
    """Meta-train per cfg, checkpointing into directory `out` and logging to TensorBoard `logdir`.
    max_batches: stop (and save) after this many batches in this call; a later resume continues."""
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    out = Path(out)
    if resume and (out / checkpoints.STATE_FILE).exists():
        st = load_state(out, device)
        if config_mod.to_dict(st.cfg) != config_mod.to_dict(cfg):
            diff = [k for k, v in config_mod.to_dict(cfg).items() if config_mod.to_dict(st.cfg)[k] != v]
            raise ConfigError(f"--resume: the config differs from the checkpoint's in {', '.join(diff)}")
    elif not resume and (out / checkpoints.STATE_FILE).exists():
        raise ConfigError(f"{out} already holds a training state; pass --resume to continue it or choose another --out")
    else:
        st = build(cfg, device)
    n_batches = -(-cfg.trajectories // cfg.batch)
    writer = SummaryWriter(str(logdir)) if logdir is not None else None
    flag = _StopFlag()
    old = signal.signal(signal.SIGINT, flag) if _main_thread() else None
    bar = tqdm(total=n_batches, initial=st.batches_done, disable=not progress, unit="batch", dynamic_ncols=True)
    t0, done = time.perf_counter(), 0
    try:
        stop_at = n_batches if max_batches is None else min(n_batches, st.batches_done + max_batches)
        while st.batches_done < stop_at and not flag.stop:
            b = st.batches_done
            size = min(cfg.batch, cfg.trajectories - b * cfg.batch)
            task = tasks.sample(tasks.train_seeds(cfg.seed, b * cfg.batch, size), cfg.widths, cfg.n, device=device)
            stats = train_batch(st, task)
            done += size * cfg.steps
            rate = done / (time.perf_counter() - t0)
            bar.update(1)
            bar.set_postfix(meta_loss=f"{stats.get('meta_loss', math.nan):.4g}", traj_steps_s=f"{rate:.0f}",
                            skipped=st.skipped_windows)
            if writer is not None:
                _log_batch(writer, st, stats, rate)
            if cfg.eval_every and (st.batches_done % cfg.eval_every == 0 or st.batches_done == n_batches):
                ev = heldout_eval(st.model, cfg, device)
                st.history.append({"trajectories": st.trajectories_seen, **ev})
                if writer is not None:
                    for k, v in ev.items():
                        writer.add_scalar(f"heldout/{k}", v, st.trajectories_seen)
            if cfg.ckpt_every and st.batches_done % cfg.ckpt_every == 0:
                save_state(st, out)
        save_state(st, out)
    finally:
        bar.close()
        if writer is not None:
            writer.close()
        if old is not None:
            signal.signal(signal.SIGINT, old)
    st.interrupted = flag.stop
    return st


def _log_batch(writer: Any, st: TrainState, stats: dict[str, float], rate: float) -> None:
    x = st.trajectories_seen
    names = {"meta_loss": "train/meta_loss", "grad_norm": "train/meta_grad_norm",
             "tele_eps": "train/teleport_magnitude", "lr": "train/learned_lr"}
    for k, tag in names.items():
        if k in stats:
            writer.add_scalar(tag, stats[k], x)
    writer.add_scalar("train/skipped_windows", st.skipped_windows, x)
    writer.add_scalar("train/traj_steps_per_s", rate, x)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
