"""Truncated-BPTT meta-training of a learned method over batched inner trajectories.

B trajectories (tasks from the training seed range) run in parallel. Each trajectory of `horizon(settings, b)`
inner steps (fixed, or log-uniform between min_steps and steps per batch b) is cut into windows of
`unroll` steps; after each window the meta-loss (a weighted sum of the inner
losses after each step, plain or log) is back-propagated into the method's parameters, Adam takes a
clipped step, and the weights and method state are detached. A window whose losses or meta-gradient are
non-finite is skipped (no update), counted, and its batch abandoned.

The trainer knows the `Method` protocol, the task protocol and its own `TrainerSettings` only. Held-out
evaluation, logging, checkpoints and stopping are the caller's (`metatele.train` wires them in as callbacks).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from metatele.methods.base import Method, set_horizon
from metatele.outer.distributed import SOLO, Reducer
from metatele.outer.settings import TrainerSettings
from metatele.step import inner_step
from metatele.tasks.base import TaskBatch

REJECT = 1e12  # an update that multiplies the loss cap by more than this is rejected (its gradients could overflow)

__all__ = ["Learnable", "Progress", "Window", "meta_loss", "unroll_window", "detach", "horizon", "meta_lr",
           "meta_update", "train_batch", "meta_train"]


class Learnable(Method, Protocol):
    """A method with meta-parameters."""

    def parameters(self) -> Iterator[torch.nn.Parameter]: ...


@dataclass
class Progress:
    """How far a meta-training run has got (saved in the training state)."""

    batches_done: int = 0
    skipped_windows: int = 0
    history: list[dict[str, float]] = field(default_factory=list)  # held-out evaluations


def meta_loss(losses: torch.Tensor, kind: str, growth: float = 1.0) -> torch.Tensor:
    """losses (U, B) after each step of a window → scalar: Σ_t w_t ℓ(L_t), mean over B.
    ℓ = identity ("sum", the paper) or log ("log", scale-free); w_t ∝ growth^t with mean 1."""
    U = losses.shape[0]
    w = growth ** torch.arange(1, U + 1, dtype=losses.dtype, device=losses.device)
    w = w * (U / w.sum())
    values = losses.log() if kind == "log" else losses
    return (w[:, None] * values).sum(0).mean()


@dataclass
class Window:
    losses: torch.Tensor          # (unroll, B) loss after each step, differentiable
    weights: list[torch.Tensor]   # weights after the window (attached to the graph)
    state: Any                    # method state after the window (attached)
    info: dict[str, list[float]]  # per-step means of the proposals' diagnostics
    alive: torch.Tensor | None = None  # (B,) tasks not frozen at their loss cap


def unroll_window(method: Method, task: TaskBatch, weights: Sequence[torch.Tensor], state: Any, start: int,
                  unroll: int, second_order: bool = True, alive: torch.Tensor | None = None,
                  cap: torch.Tensor | None = None) -> Window:
    """Differentiably run inner steps start … start+unroll−1.

    alive (B,) bool and cap (B,): once an update takes a task's loss above its cap, the task is frozen (its
    weights stop changing). An exploding trajectory thus ends with finite, rising losses (a learning signal for
    the method) instead of non-finite values that would void the whole window. An update whose loss would be
    non-finite or above REJECT × cap is rejected outright (no signal from it, but no NaN either). The check costs
    one forward pass without gradients per step. The updated `alive` is returned in the window.
    """
    losses: list[torch.Tensor] = []
    info: dict[str, list[float]] = {}
    weights = list(weights)
    for t in range(start, start + unroll):
        res = inner_step(method, weights, state, task, t, differentiable=True, second_order=second_order)
        if alive is not None and cap is not None:
            with torch.no_grad():
                after = task.loss([w.detach() for w in res.weights], task.data(t + 1))
            accept = torch.isfinite(after) & (after <= REJECT * cap)
            keep = (alive & accept)[:, None, None]
            weights = [torch.where(keep, new, old) for new, old in zip(res.weights, weights)]
            alive = alive & accept & (after <= cap)
            state = res.state
        else:
            weights, state = res.weights, res.state
        if t > start:
            losses.append(res.loss)
        for k, v in res.proposal.info.items():
            info.setdefault(k, []).append(float(v.detach().float().mean()))
    losses.append(task.loss(weights, task.data(start + unroll)))
    return Window(torch.stack(losses), weights, state, info, alive)


def detach(tree: Any) -> Any:
    """The same nested structure (lists, tuples, dataclasses of tensors) with every tensor detached."""
    if isinstance(tree, torch.Tensor):
        return tree.detach()
    if isinstance(tree, (list, tuple)):
        return type(tree)(detach(x) for x in tree)
    if hasattr(tree, "__dataclass_fields__"):
        return type(tree)(**{k: detach(getattr(tree, k)) for k in tree.__dataclass_fields__})
    return tree


def horizon(settings: TrainerSettings, batch: int) -> int:
    """The trajectory length of batch `batch`: settings.steps, or, if settings.min_steps > 0, a draw log-uniform in
    [min_steps, steps] rounded to a multiple of unroll (deterministic in settings.seed and the batch index)."""
    if not settings.min_steps:
        return settings.steps
    s = settings
    u = float(torch.rand((), generator=torch.Generator().manual_seed(s.seed * 1_000_003 + batch), dtype=torch.float64))
    length = math.exp(math.log(s.min_steps) + u * (math.log(s.steps) - math.log(s.min_steps)))
    return min(s.steps, max(s.unroll, s.unroll * round(length / s.unroll)))


def meta_lr(settings: TrainerSettings, batch: int, n_batches: int) -> float:
    """The meta learning rate for batch `batch` of `n_batches`: settings.meta_lr decaying along a cosine to
    settings.meta_lr × settings.meta_lr_final at the last batch (constant if meta_lr_final is 1)."""
    frac = batch / max(n_batches - 1, 1)
    final = settings.meta_lr_final
    return settings.meta_lr * (final + (1 - final) * 0.5 * (1 + math.cos(math.pi * frac)))


def windows(settings: TrainerSettings, batch: int) -> int:
    """The truncated-BPTT windows (meta-updates, unless one diverges) of batch `batch`."""
    return -(-horizon(settings, batch) // settings.unroll)


def meta_update(params: Sequence[torch.Tensor], opt: torch.optim.Optimizer, finite: bool, set_grads: Callable[[], None],
                reducer: Reducer, weight: float, clip: float) -> float:
    """One meta-update of an estimator: if the window was `finite` on every rank, `set_grads()` fills each p.grad,
    the ranks average them (this rank's weight: `weight`), their norm is clipped to `clip` and `opt` steps. Returns
    the norm before clipping; nan if the window or its meta-gradient was not finite (then nothing moves)."""
    opt.zero_grad(set_to_none=True)
    gn = math.nan
    if reducer.all_finite(finite):
        set_grads()
        reducer.all_reduce_grads(params, weight)
        gn = float(torch.nn.utils.clip_grad_norm_(params, clip))
    if not math.isfinite(gn):
        opt.zero_grad(set_to_none=True)
        return math.nan
    opt.step()
    return gn


def train_batch(method: Learnable, opt: torch.optim.Optimizer, task: TaskBatch, settings: TrainerSettings,
                steps: int | None = None, reducer: Reducer = SOLO,
                on_window: Callable[[], None] | None = None) -> dict[str, float]:
    """Meta-train on one batch of trajectories of `steps` inner steps (default settings.steps), one meta-update per
    window; returns mean statistics, "skipped" (1 if a window diverged and the batch was abandoned) and "windows"
    (the meta-updates taken). reducer: in a distributed run, agrees on finiteness and averages each window's
    meta-gradient with the other ranks' (this rank's weight: its trajectory count); the default does nothing.
    on_window() is called after each window's meta-update (a progress bar)."""
    params = list(method.parameters())
    steps = steps or settings.steps
    set_horizon(method, steps)  # T of progress features: this batch's trajectory length
    weights = task.init_weights()
    state = method.init_state(weights)
    alive = cap = None
    if settings.loss_cap:  # freeze tasks whose loss exceeds loss_cap × their initial loss
        cap = settings.loss_cap * task.loss(weights, task.data(0)).detach()
        alive = torch.isfinite(cap)
    stats: dict[str, list[float]] = {"meta_loss": [], "grad_norm": []}
    skipped = 0
    for start in range(0, steps, settings.unroll):
        win = unroll_window(method, task, weights, state, start, settings.unroll, settings.second_order, alive, cap)
        for k, v in win.info.items():
            stats.setdefault(k, []).extend(v)
        ml = meta_loss(win.losses, settings.meta_loss, settings.loss_growth)
        gn = meta_update(params, opt, bool(torch.isfinite(win.losses).all()), ml.backward, reducer, len(task.seeds),
                         settings.clip)
        if math.isnan(gn):  # divergence: no update from this window, abandon the batch
            skipped += 1
            break
        stats["meta_loss"].append(float(ml.detach()))
        stats["grad_norm"].append(gn)
        weights, state, alive = detach(win.weights), detach(win.state), win.alive
        if on_window is not None:
            on_window()
    out = {k: sum(v) / len(v) for k, v in stats.items() if v}
    out["skipped"] = float(skipped)
    if alive is not None:
        out["frozen"] = float((~alive).sum())  # tasks stopped at the loss cap
    out["windows"] = float(len(stats["meta_loss"]))  # meta-updates taken
    return out


def meta_train(settings: TrainerSettings, method: Learnable, opt: torch.optim.Optimizer, progress: Progress, *,
               sample: Callable[[int, int], TaskBatch],
               after_batch: Callable[[Progress, dict[str, float], int], None],
               stop: Callable[[], bool], max_batches: int | None = None, reducer: Reducer = SOLO,
               on_window: Callable[[], None] | None = None,
               step: Callable[..., dict[str, float]] | None = None) -> Progress:
    """The outer loop: batch after batch of trajectories until settings.trajectories are done, `stop()` is
    true, or `max_batches` batches ran in this call. sample(first, count) gives the tasks of trajectories
    first … first+count−1 (in a distributed run, this rank's slice of them); after_batch(progress, stats,
    trajectories in the batch) logs, evaluates and saves; reducer and on_window: as in `train_batch`. step: the
    estimator's batch (`train_batch`'s signature; default `train_batch`, `metatele.outer.pes.batch_step` picks the
    settings' estimator)."""
    step = step or train_batch
    n_batches = settings.n_batches
    stop_at = n_batches if max_batches is None else min(n_batches, progress.batches_done + max_batches)
    while progress.batches_done < stop_at and not stop():
        if settings.meta_lr_final != 1.0:
            for group in opt.param_groups:
                group["lr"] = meta_lr(settings, progress.batches_done, n_batches)
        first = progress.batches_done * settings.batch
        size = min(settings.batch, settings.trajectories - first)
        stats = step(method, opt, sample(first, size), settings, horizon(settings, progress.batches_done), reducer,
                     on_window)
        progress.batches_done += 1
        progress.skipped_windows += int(stats["skipped"])
        after_batch(progress, stats, size)
    return progress
