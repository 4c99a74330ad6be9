"""Teleportation for a user's own `nn.Sequential` MLP, in place, alongside any `torch.optim` optimizer.

The network must be Linear, (LeakyReLU, Linear)* (`metatele.nn.inspect_mlp`): one LeakyReLU slope in (0, 1), and
either every Linear with a bias or none. The data X is (n, d0), one sample per row, as nn.Linear takes it, and
targets y are whatever `loss_fn(model(X), y)` takes (class indices (n,) for cross-entropy). The weights are read,
acted on and written back by the adapter (`metatele.nn`): `teleport_chain_` applies the nearest exact action,
computed in float64, with its documented fallback when the batch is larger than the exact limit
(`Chain.max_batch`: every teleported hidden layer's input width, +1 with biases) or rank-deficient: the action is
exact on a leading sub-batch, and the loss drift on the whole batch is measured and reported.

- `ascent_teleport_`: gradient ascent on ‖∇L‖² over T (the shared `metatele.teleport.ascent.ascend_group`), on the
  exact sub-batch, for any twice-differentiable loss_fn; `random_teleport_`: a random group element of a given
  norm (the control), in GL or the positive rescalings (exact on all data).
- `Teleporter`: teleports at the steps of a `Schedule` of a training loop driven by any torch.optim optimizer, and
  keeps or resets the optimizer's state after each teleport. It counts what its teleports did (`counts`) and warns
  once per run (`TeleportWarning`) when one was undone or skipped, and once when one was exact only on a
  sub-batch.
Each returns or records a `TeleportResult` (loss and ‖∇L‖² on the whole teleport batch, before and after).
"""
from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace

import torch
from torch import nn

from metatele.errors import ConfigError, RankDeficientError
from metatele.methods.teleports import Schedule
from metatele.nn import (DEFAULT_RTOL, ArchitectureError, Chain, TeleportResult, TeleportWarning, check_inputs,
                         exact_rows, inspect_mlp, teleport_chain_)
from metatele.tasks.mlp import forward
from metatele.teleport.action import grad_norm_sq, pinv_full_rank, rescale, with_ones
from metatele.teleport.ascent import ascend_group

__all__ = ["ArchitectureError", "TeleportResult", "TeleportWarning", "Teleporter", "Schedule", "inspect_mlp",
           "ascent_teleport_", "random_teleport_", "reset_optimizer_state_", "DEFAULT_RTOL", "STATE_POLICIES"]

STATE_POLICIES = ("keep", "reset")

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _loss_and_grad_norm_sq(model: nn.Module, X: torch.Tensor, y: torch.Tensor, loss_fn: LossFn) -> tuple[float, float]:
    """The loss on (X, y) and ‖∇L‖² over every trainable parameter of the model."""
    params = [p for p in model.parameters() if p.requires_grad]
    with torch.enable_grad():
        loss = loss_fn(model(X), y)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
    return float(loss.detach()), float(sum(g.double().pow(2).sum() for g in grads if g is not None))


def _measured(model: nn.Module, X: torch.Tensor, y: torch.Tensor, loss_fn: LossFn, before: tuple[float, float],
              r: TeleportResult, t0: float) -> TeleportResult:
    """`r` with the loss and ‖∇L‖² on the whole batch before and after, and the time since t0."""
    after = _loss_and_grad_norm_sq(model, X, y, loss_fn) if r.applied else before
    return replace(r, loss_before=before[0], loss_after=after[0], grad_norm_sq_before=before[1],
                   grad_norm_sq_after=after[1], objective_before=before[1], objective_after=after[1],
                   seconds=time.perf_counter() - t0)


def _start(model: nn.Sequential, X: torch.Tensor, y: torch.Tensor, layers: int | None
           ) -> tuple[Chain, int, torch.Tensor, torch.Tensor]:
    """The chain, the number of teleported layers, and X, y checked and moved to the model's dtype and device."""
    chain = inspect_mlp(model)
    _check_data(chain, X, y)
    w = chain.linears[0].weight
    return chain, chain.check_layers(layers), X.to(w), y.to(w) if y.is_floating_point() else y.to(w.device)


def _check_data(chain: Chain, X: torch.Tensor, y: torch.Tensor) -> None:
    """X (n, d0) and the weights finite (`check_inputs`); y, for any loss, with one finite entry per row of X."""
    check_inputs(chain, X, None)
    if y.shape[:1] != X.shape[:1]:
        raise ValueError(f"y must have one entry per row of X ({X.shape[0]}), got shape {tuple(y.shape)}")
    if y.is_floating_point() and not torch.isfinite(y).all():
        raise ValueError("y holds NaN or inf")


def ascent_teleport_(model: nn.Sequential, X: torch.Tensor, y: torch.Tensor, loss_fn: LossFn, *, steps: int = 10,
                     lr: float | None = None, layers: int | None = None, rtol: float = DEFAULT_RTOL,
                     compute_dtype: torch.dtype = torch.float64) -> TeleportResult:
    """Teleport in place to a steeper point of the level set of loss_fn(model(X), y): `steps` ascent steps on
    ‖∇L(g·W)‖² (the gradient of every Linear parameter) over T (`ascend_group`: normalized steps of 0.03 per layer
    if lr is None, else plain steps of lr), on the exact sub-batch of X (n, d0) (all of it when n ≤ max_batch(layers)
    and it has full rank), computed in `compute_dtype`, then applied by `teleport_chain_`. layers: teleport only the
    first `layers` hidden layers (default all), which allows a batch up to their own input widths."""
    t0 = time.perf_counter()
    chain, j, X, y = _start(model, X, y, layers)
    before = _loss_and_grad_norm_sq(model, X, y, loss_fn)
    XT = chain.inputs_T(X).to(compute_dtype)
    n = exact_rows(chain, XT, j)
    if n == 0:
        r = TeleportResult(X.shape[0], 0, "skipped", reason="no leading rows of the batch have full rank")
        return _measured(model, X, y, loss_fn, before, r, t0)
    Xe = XT[..., :n]
    ye = y[:n].to(compute_dtype) if y.is_floating_point() else y[:n]
    W = [w.to(compute_dtype) for w in chain.get_weights()]
    tail = [w.requires_grad_() for w in W[j + 1:]]  # untouched layers, still in ‖∇L‖²

    def grad_norm_sq_at(Wt: list[torch.Tensor]) -> torch.Tensor:
        loss = loss_fn(forward(Wt + tail, Xe, chain.act, chain.bias)[0].T, ye)
        return grad_norm_sq(torch.autograd.grad(loss, Wt + tail, create_graph=True))

    try:
        T = ascend_group(W[: j + 1], Xe, grad_norm_sq_at, act=chain.act, steps=steps, lr=lr, bias=chain.bias,
                         X_pinv=pinv_full_rank(with_ones(Xe) if chain.bias else Xe), nearest=True)[0]
    except RankDeficientError as e:  # the ascent walked to a singular layer input: no teleport
        r = TeleportResult(X.shape[0], n, "skipped", reason=f"the ascent reached a singular layer input ({e})")
        return _measured(model, X, y, loss_fn, before, r, t0)
    return _measured(model, X, y, loss_fn, before, teleport_chain_(chain, X, T, rtol=rtol), t0)


def random_teleport_(model: nn.Sequential, X: torch.Tensor, y: torch.Tensor, loss_fn: LossFn,
                     magnitude: float | Sequence[float], *, group: str = "gl", layers: int | None = None,
                     generator: torch.Generator | None = None, rtol: float = DEFAULT_RTOL) -> TeleportResult:
    """The control: a random group element applied in place, its size `magnitude` (one value, or one per teleported
    hidden layer). group="gl": g_m = I + T_m with T_m of i.i.d. normal entries scaled to Frobenius norm magnitude,
    by `teleport_chain_` on X (n, d0); group="diag": g_m = diag(exp(s_m)), s_m normal scaled to norm magnitude (a
    positive rescaling, exact on all data). Draws in float64 from `generator` (CPU)."""
    t0 = time.perf_counter()
    chain, j, X, y = _start(model, X, y, layers)
    ks = chain.widths[1: j + 1]
    mags = [float(magnitude)] * len(ks) if isinstance(magnitude, (int, float)) else [float(m) for m in magnitude]
    if len(mags) != len(ks):
        raise ConfigError(f"need one magnitude per teleported hidden layer ({len(ks)}), got {len(mags)}")
    before = _loss_and_grad_norm_sq(model, X, y, loss_fn)
    if group == "gl":
        T = [torch.randn(1, k, k, generator=generator, dtype=torch.float64) for k in ks]
        return _measured(model, X, y, loss_fn, before, teleport_chain_(chain, X, T, mags, rtol=rtol), t0)
    if group != "diag":
        raise ConfigError(f"unknown teleport group {group!r}; choose 'gl' or 'diag'")
    W = [w.double() for w in chain.get_weights()]
    s = [torch.randn(1, k, generator=generator, dtype=torch.float64) for k in ks]
    s = [(v * (m / v.norm())).to(W[0].device) for v, m in zip(s, mags)]
    chain.set_weights_(rescale(W, s))
    r = TeleportResult(X.shape[0], X.shape[0], "applied", tuple(mags), objective="random-diag")
    return _measured(model, X, y, loss_fn, before, r, t0)


def reset_optimizer_state_(optimizer: torch.optim.Optimizer) -> None:
    """Give `optimizer` the state of a new optimizer of its class built from its current param groups:
    momentum buffers, Adam moments, RMSProp averages, AdaGrad sums and step counts start afresh, while the
    hyper-parameters (including an lr a scheduler has changed) stay."""
    try:
        fresh = type(optimizer)([dict(g) for g in optimizer.param_groups])
    except (TypeError, ValueError) as e:
        raise ConfigError(f"cannot rebuild {type(optimizer).__name__} from its param groups to reset its state "
                          f"({e}); use state='keep'") from None
    optimizer.load_state_dict(fresh.state_dict())


class Teleporter:
    """Teleport `model` at scheduled training steps, beside any torch.optim.Optimizer.

    Call `step()` once per training step, before that step's forward pass. Step t (0-based count of calls)
    teleports when t is in the schedule: `schedule`, or one built from `at_steps`, and `at_epochs` with
    `steps_per_epoch` and `per_epoch` (`Schedule.of`). Each teleport draws `n_samples` rows of (X, y) at random
    (default: half the exact limit `Chain.max_batch(layers)`, at most the rows of X: a batch at the limit is exact in
    theory but often too ill-conditioned, and real images have constant pixels that make it rank-deficient; a
    larger n_samples uses the fallback of `teleport_chain_`) and applies `ascent_teleport_` (method "ascent", with
    `ascent_steps` and `lr`) or `random_teleport_` (method "random", with `magnitude`), to the first `layers`
    hidden layers (default all).

    Optimizer state after a teleport: "keep" leaves the optimizer's state as it is (its momentum and
    second-moment estimates, built at the old weights, carry over to the new ones); "reset" gives it a fresh
    state (`reset_optimizer_state_`), as re-creating the optimizer would. `history` lists (step, result);
    `counts` the outcomes ("applied", "undone", "skipped") and "sub-batch" (applied exactly on fewer rows).
    """

    def __init__(self, model: nn.Sequential, optimizer: torch.optim.Optimizer, loss_fn: LossFn, X: torch.Tensor,
                 y: torch.Tensor, *, at_steps: Iterable[int] = (), at_epochs: Iterable[int] = (),
                 steps_per_epoch: int | None = None, per_epoch: int = 1, schedule: Schedule | None = None,
                 n_samples: int | None = None, layers: int | None = None, method: str = "ascent",
                 ascent_steps: int = 10, lr: float | None = None, magnitude: float | Sequence[float] = 0.3,
                 state: str = "keep", rtol: float = DEFAULT_RTOL, generator: torch.Generator | None = None) -> None:
        chain = inspect_mlp(model)
        _check_data(chain, X, y)
        n = min(max(1, chain.max_batch(layers) // 2), X.shape[0]) if n_samples is None else n_samples
        if not 1 <= n <= X.shape[0]:
            raise ConfigError(f"n_samples must be in 1..{X.shape[0]} (the rows of X), got {n}")
        if state not in STATE_POLICIES:
            raise ConfigError(f"state must be one of {STATE_POLICIES}, got {state!r}")
        if method not in ("ascent", "random"):
            raise ConfigError(f"method must be 'ascent' or 'random', got {method!r}")
        at_steps, at_epochs = list(at_steps), list(at_epochs)
        if schedule is not None and (at_steps or at_epochs):
            raise ConfigError("give either schedule or at_steps/at_epochs, not both")
        try:
            self.schedule = schedule or Schedule.of(at_steps, at_epochs, steps_per_epoch, per_epoch)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        self.model, self.optimizer, self.loss_fn, self.X, self.y = model, optimizer, loss_fn, X, y
        self.n_samples, self.layers, self.method, self.ascent_steps, self.lr = n, layers, method, ascent_steps, lr
        self.magnitude, self.state, self.rtol, self.generator = magnitude, state, rtol, generator
        self.steps_taken = 0
        self.history: list[tuple[int, TeleportResult]] = []
        self.counts = {"applied": 0, "undone": 0, "skipped": 0, "sub-batch": 0}

    @property
    def seconds(self) -> float:
        """Time spent teleporting so far."""
        return sum(r.seconds for _, r in self.history)

    def step(self, batch: tuple[torch.Tensor, torch.Tensor] | None = None) -> TeleportResult | None:
        """Count one training step; teleport first if it is scheduled. Returns what the teleport did, or None.
        batch: the step's own (X_b, y_b), whose first n_samples rows are then the teleport batch (default: n_samples
        rows of the Teleporter's (X, y) drawn at random)."""
        t = self.steps_taken
        self.steps_taken += 1
        if t not in self.schedule:
            return None
        t0 = time.perf_counter()
        if batch is None:
            idx = torch.randperm(self.X.shape[0], generator=self.generator)[: self.n_samples].to(self.X.device)
            X, y = self.X[idx], self.y[idx]
        else:
            X, y = batch[0][: self.n_samples], batch[1][: self.n_samples]
        if self.method == "ascent":
            r = ascent_teleport_(self.model, X, y, self.loss_fn, steps=self.ascent_steps, lr=self.lr,
                                 layers=self.layers, rtol=self.rtol)
        else:
            r = random_teleport_(self.model, X, y, self.loss_fn, self.magnitude, layers=self.layers,
                                 generator=self.generator, rtol=self.rtol)
        if self.state == "reset" and r.applied:
            reset_optimizer_state_(self.optimizer)
        r = replace(r, seconds=time.perf_counter() - t0)
        self.history.append((t, r))
        self._count(t, r)
        return r

    def _count(self, t: int, r: TeleportResult) -> None:
        """Count the outcome; warn on the first teleport of this run undone or skipped, and on the first exact
        only on a sub-batch."""
        self.counts[r.outcome] += 1
        sub = r.applied and r.exact_samples < r.n_samples
        self.counts["sub-batch"] += sub
        if not r.applied and self.counts["undone"] + self.counts["skipped"] == 1:
            warnings.warn(f"teleport at step {t} was {r.outcome}: {r.reason}; the weights are unchanged. Later ones "
                          "are counted in Teleporter.counts, not warned", TeleportWarning, stacklevel=3)
        if sub and self.counts["sub-batch"] == 1:
            warnings.warn(f"teleport at step {t}: {r.reason}; the loss on all {r.n_samples} samples moved by "
                          f"{r.drift:.2e} (relative). Later ones are counted in Teleporter.counts, not warned",
                          TeleportWarning, stacklevel=3)
