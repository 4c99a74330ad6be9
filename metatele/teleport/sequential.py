"""Teleportation for a user's own `nn.Sequential` MLP, in place, alongside any `torch.optim` optimizer.

The network must be Linear, (LeakyReLU, Linear)*: every activation an `nn.LeakyReLU` with one common slope
in (0, 1), and either every Linear with a bias or none. Its weights are read as the batched representation
of `metatele.teleport.action` with a task dimension of 1 (augmented [W b] when there are biases), acted on
by the same maths, and written back. The data X is (n, d0), one sample per row, as nn.Linear takes it, and
targets y are whatever `loss_fn(model(X), y)` takes (class indices (n,) for cross-entropy).

The action here is the nearest one (`action.py`, nearest=True): each W_m moves by the least-norm change that
keeps the network's outputs on the teleport batch, so the part of W_m that acts outside the span of the
batch is left alone (the plain minimum-norm formula would project W_m onto that span, even at g = I). The exact action needs n ≤ every hidden layer's input width (+ 1 with biases): the
paper's 784-16-10-10 net can teleport exactly on at most 16 samples (`MLPStructure.max_batch`), and a
larger batch is refused rather than approximated.

- `teleport_`, `group_action_`: apply a given g = I + T or g.
- `ascent_teleport_`: gradient ascent on ‖∇L‖² over T (the shared `metatele.teleport.ascent.ascend_group`),
  for any differentiable loss_fn; `random_teleport_`: a random T of a given norm (the control).
  Both compute in float64, write back in the model's dtype and keep the loss on the teleport batch within
  a relative tolerance `rtol` (default 1e-4): if the written-back loss moved more, T is halved (up to 4
  times) and otherwise the teleport is undone. The returned `TeleportResult` reports the drift.
- `Teleporter`: teleports at scheduled steps or epochs of a training loop driven by any torch.optim
  optimizer, and keeps or resets the optimizer's state after each teleport.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from metatele.errors import ConfigError, RankDeficientError
from metatele.tasks.mlp import LeakyReLU, forward
from metatele.teleport.action import grad_norm_sq, group_action, normalize, pinv_full_rank, teleport, with_ones
from metatele.teleport.ascent import ascend_group

__all__ = ["ArchitectureError", "MLPStructure", "TeleportResult", "Teleporter", "inspect_mlp", "get_weights",
           "set_weights_", "layer_inputs_T", "group_action_", "teleport_", "ascent_teleport_", "random_teleport_",
           "reset_optimizer_state_", "DEFAULT_RTOL", "STATE_POLICIES"]

DEFAULT_RTOL = 1e-4  # largest relative change of the teleport batch's loss that a teleport may cause
MAX_HALVINGS = 4  # halvings of T tried before a teleport that breaks the tolerance is undone
STATE_POLICIES = ("keep", "reset")

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class ArchitectureError(ConfigError):
    """The model is not an MLP that metatele can teleport."""


@dataclass(frozen=True)
class MLPStructure:
    """What teleporting needs to know about an nn.Sequential MLP."""

    linears: tuple[nn.Linear, ...]
    act: LeakyReLU
    bias: bool

    @property
    def widths(self) -> tuple[int, ...]:
        return (self.linears[0].in_features, *(lin.out_features for lin in self.linears))

    @property
    def n_hidden(self) -> int:
        return len(self.linears) - 1

    def max_batch(self, layers: int | None = None) -> int:
        """The largest teleport batch for which the exact action exists: min over the inputs of the
        teleported hidden layers (the first `layers`, default all) of width (+1 with biases)."""
        return min(self.widths[: self.check_layers(layers)]) + int(self.bias)

    def check_layers(self, layers: int | None) -> int:
        """The number of leading hidden layers to teleport (None: all), checked."""
        if layers is None:
            return self.n_hidden
        if not 1 <= layers <= self.n_hidden:
            raise ArchitectureError(f"layers must be in 1..{self.n_hidden} (the hidden layers), got {layers}")
        return layers


def inspect_mlp(model: nn.Module) -> MLPStructure:
    """Check that `model` is a teleportable MLP and describe it; raises ArchitectureError otherwise."""
    if not isinstance(model, nn.Sequential):
        raise ArchitectureError(f"teleport needs an nn.Sequential, got {type(model).__name__}")
    mods = list(model)
    if len(mods) < 3 or len(mods) % 2 == 0:
        raise ArchitectureError("teleport needs Linear, (LeakyReLU, Linear)* with at least one hidden layer, "
                                f"got {len(mods)} modules")
    linears, slopes = mods[0::2], mods[1::2]
    for i, m in enumerate(linears):
        if not isinstance(m, nn.Linear):
            raise ArchitectureError(f"module {2 * i} is {type(m).__name__}; expected nn.Linear")
    for i, m in enumerate(slopes):
        if not isinstance(m, nn.LeakyReLU):
            raise ArchitectureError(f"module {2 * i + 1} is {type(m).__name__}; the group action needs an invertible "
                                    "nn.LeakyReLU (0 < negative_slope < 1) between the Linear layers")
    slope_set = {float(m.negative_slope) for m in slopes}
    if len(slope_set) != 1 or not 0.0 < next(iter(slope_set)) < 1.0:
        raise ArchitectureError(f"every LeakyReLU needs the same negative_slope in (0, 1), got {sorted(slope_set)}")
    biases = {lin.bias is not None for lin in linears}
    if len(biases) != 1:
        raise ArchitectureError("either every Linear has a bias or none does")
    for a, b in zip(linears[:-1], linears[1:]):
        if a.out_features != b.in_features:
            raise ArchitectureError(f"Linear widths do not chain: {a.out_features} → {b.in_features}")
    return MLPStructure(tuple(linears), LeakyReLU(next(iter(slope_set))), biases.pop())


def get_weights(s: MLPStructure) -> list[torch.Tensor]:
    """Detached copies of the weights, one (1, d_out, d_in [+ 1]) tensor per Linear."""
    out = []
    for lin in s.linears:
        W = lin.weight.detach()
        if s.bias:
            W = torch.cat([W, lin.bias.detach()[:, None]], dim=1)
        out.append(W[None].clone())
    return out


@torch.no_grad()
def set_weights_(s: MLPStructure, weights: Sequence[torch.Tensor]) -> None:
    """Write (1, d_out, d_in [+ 1]) weights back into the Linear layers, in place."""
    for lin, W in zip(s.linears, weights):
        lin.weight.copy_(W[0, :, : lin.in_features])
        if s.bias:
            lin.bias.copy_(W[0, :, -1])


def layer_inputs_T(s: MLPStructure, X: torch.Tensor, layers: int | None = None) -> torch.Tensor:
    """Data (n, d0) → the batched layout (1, d0, n), after checking the exact action on the first `layers`
    hidden layers (default all) exists for it."""
    if X.dim() != 2 or X.shape[1] != s.widths[0]:
        raise ArchitectureError(f"teleport data must be (n, {s.widths[0]}), got {tuple(X.shape)}")
    if X.shape[0] > s.max_batch(layers):
        raise ArchitectureError(f"a teleport batch of {X.shape[0]} samples is too large for an exact action: it must "
                                f"not exceed a teleported hidden layer's input width{' plus 1' if s.bias else ''} "
                                f"({s.max_batch(layers)})")
    return X.T[None]


def group_action_(model: nn.Sequential, X: torch.Tensor, g: Sequence[torch.Tensor]) -> None:
    """Apply g_m ∈ GL(k_m), one (k_m, k_m) per hidden layer, in place; the outputs on X are unchanged."""
    s = inspect_mlp(model)
    W = get_weights(s)
    new = group_action(W, layer_inputs_T(s, X.to(W[0])), [gm.to(W[0])[None] for gm in g], act=s.act, bias=s.bias,
                       nearest=True)
    set_weights_(s, new)


def teleport_(model: nn.Sequential, X: torch.Tensor, T: Sequence[torch.Tensor], magnitude: float | None = None) -> None:
    """Apply g_m = I + T_m (each T_m (k_m, k_m) scaled to Frobenius norm `magnitude` unless None), in place."""
    s = inspect_mlp(model)
    W = get_weights(s)
    new = teleport(W, layer_inputs_T(s, X.to(W[0])), [t.to(W[0])[None] for t in T], magnitude, act=s.act, bias=s.bias,
                   nearest=True)
    set_weights_(s, new)


@dataclass(frozen=True)
class TeleportResult:
    """One teleport, measured on its teleport batch in the model's dtype (loss and ‖∇L‖² over all Linear
    parameters, before and after). magnitude: ‖T_m‖_F per teleported hidden layer as applied (after any
    halvings; empty if not applied); applied is False, and the weights are as before, when the batch is
    rank-deficient (no exact action on it), the ascent reached a singular layer input, or even the last
    halving broke the tolerance."""

    n_samples: int
    loss_before: float
    loss_after: float
    grad_norm_sq_before: float
    grad_norm_sq_after: float
    magnitude: tuple[float, ...]
    halvings: int
    applied: bool
    seconds: float

    @property
    def drift(self) -> float:
        """|L_after − L_before| / |L_before| on the teleport batch."""
        return abs(self.loss_after - self.loss_before) / max(abs(self.loss_before), torch.finfo(torch.float64).tiny)

    @property
    def gain(self) -> float:
        """‖∇L‖² after / before."""
        return self.grad_norm_sq_after / max(self.grad_norm_sq_before, torch.finfo(torch.float64).tiny)


def _loss_and_grad_norm_sq(s: MLPStructure, model: nn.Sequential, X: torch.Tensor, y: torch.Tensor,
                           loss_fn: LossFn) -> tuple[float, float]:
    params = [p for lin in s.linears for p in (lin.weight, lin.bias) if p is not None]
    with torch.enable_grad():
        loss = loss_fn(model(X), y)
        grads = torch.autograd.grad(loss, params)
    return float(loss.detach()), float(sum(g.double().pow(2).sum() for g in grads))


def _apply_checked_(model: nn.Sequential, s: MLPStructure, X: torch.Tensor, y: torch.Tensor, loss_fn: LossFn,
                    T: Sequence[torch.Tensor] | None, X_c: torch.Tensor, X_pinv: torch.Tensor | None, rtol: float,
                    t0: float) -> TeleportResult:
    """Apply g = I + T to the first len(T) hidden layers (T_m (1, k, k) in the compute dtype of X_c (1, d0, n))
    and check the loss drift, halving T until it is within rtol; restores the weights if it never is (and
    applies nothing if T is None: a rank-deficient batch or a failed ascent)."""
    W0 = get_weights(s)
    L0, G0 = _loss_and_grad_norm_sq(s, model, X, y, loss_fn)
    W_c = [w.to(X_c.dtype) for w in W0]
    j = len(T) + 1 if T is not None else 0
    for halvings in range(MAX_HALVINGS + 1 if T is not None else 0):
        Th = [t * 0.5 ** halvings for t in T]
        try:
            new = teleport(W_c[:j], X_c, Th, None, act=s.act, X_pinv=X_pinv, bias=s.bias, nearest=True) + W_c[j:]
        except RankDeficientError:  # g·W made a layer input singular: try a smaller T
            continue
        set_weights_(s, [w.to(W0[0].dtype) for w in new])
        L1, G1 = _loss_and_grad_norm_sq(s, model, X, y, loss_fn)
        if math.isfinite(L1) and math.isfinite(G1) and abs(L1 - L0) <= rtol * abs(L0):
            mags = tuple(float(torch.linalg.matrix_norm(t[0])) for t in Th)
            return TeleportResult(X.shape[0], L0, L1, G0, G1, mags, halvings, True, time.perf_counter() - t0)
    set_weights_(s, W0)
    return TeleportResult(X.shape[0], L0, L0, G0, G0, (), MAX_HALVINGS, False, time.perf_counter() - t0)


def _prepare(model: nn.Sequential, X: torch.Tensor, dtype: torch.dtype, layers: int | None
             ) -> tuple[MLPStructure, int, torch.Tensor, torch.Tensor | None]:
    """The structure, the number of teleported hidden layers, X in the batched layout (1, d0, n) in `dtype`,
    and its first-layer pseudo-inverse (None if the batch is rank-deficient: no exact action on it)."""
    s = inspect_mlp(model)
    j = s.check_layers(layers)
    X_c = layer_inputs_T(s, X, j).to(dtype)
    try:
        return s, j, X_c, pinv_full_rank(with_ones(X_c) if s.bias else X_c)
    except RankDeficientError:
        return s, j, X_c, None


def ascent_teleport_(model: nn.Sequential, X: torch.Tensor, y: torch.Tensor, loss_fn: LossFn, *, steps: int = 10,
                     lr: float | None = None, layers: int | None = None, rtol: float = DEFAULT_RTOL,
                     compute_dtype: torch.dtype = torch.float64) -> TeleportResult:
    """Teleport in place to a steeper point of the level set of loss_fn(model(X), y): `steps` ascent steps
    on ‖∇L(g·W)‖² (the gradient of every Linear parameter) over T (`ascend_group`: normalized steps of 0.03 per
    layer if lr is None, else plain steps of lr), computed in `compute_dtype`, then the checked application
    (see the module docstring). layers: teleport only the first `layers` hidden layers (default all), which
    allows a batch up to their own input widths. X (n, d0), n ≤ max_batch(layers); loss_fn must be
    differentiable twice (cross-entropy, squared error, ...)."""
    t0 = time.perf_counter()
    s, j, X_c, X_pinv = _prepare(model, X, compute_dtype, layers)
    y_c = y.to(compute_dtype) if y.is_floating_point() else y
    W = [w.to(compute_dtype) for w in get_weights(s)]
    tail = [w.requires_grad_() for w in W[j + 1:]]  # untouched layers, still in ‖∇L‖²

    def grad_norm_sq_at(Wt: list[torch.Tensor]) -> torch.Tensor:
        loss = loss_fn(forward(Wt + tail, X_c, s.act, s.bias)[0].T, y_c)
        return grad_norm_sq(torch.autograd.grad(loss, Wt + tail, create_graph=True))

    try:
        T = None if X_pinv is None else ascend_group(W[: j + 1], X_c, grad_norm_sq_at, act=s.act, steps=steps,
                                                     lr=lr, X_pinv=X_pinv, bias=s.bias, nearest=True)[0]
    except RankDeficientError:  # the ascent walked to a singular layer input: no teleport (applied=False)
        T = None
    return _apply_checked_(model, s, X, y, loss_fn, T, X_c, X_pinv, rtol, t0)


def random_teleport_(model: nn.Sequential, X: torch.Tensor, y: torch.Tensor, loss_fn: LossFn,
                     magnitude: float | Sequence[float], *, layers: int | None = None,
                     generator: torch.Generator | None = None, rtol: float = DEFAULT_RTOL,
                     compute_dtype: torch.dtype = torch.float64) -> TeleportResult:
    """The control: g = I + T with T_m of i.i.d. normal entries scaled to Frobenius norm `magnitude` (one
    value, or one per teleported hidden layer), applied in place with the same check as `ascent_teleport_`."""
    t0 = time.perf_counter()
    s, j, X_c, X_pinv = _prepare(model, X, compute_dtype, layers)
    ks = s.widths[1: j + 1]
    mags = [float(magnitude)] * len(ks) if isinstance(magnitude, (int, float)) else [float(m) for m in magnitude]
    if len(mags) != len(ks):
        raise ConfigError(f"need one magnitude per teleported hidden layer ({len(ks)}), got {len(mags)}")
    T = [normalize(torch.randn(1, k, k, generator=generator, dtype=torch.float64).to(X_c), m)
         for k, m in zip(ks, mags)] if X_pinv is not None else None
    return _apply_checked_(model, s, X, y, loss_fn, T, X_c, X_pinv, rtol, t0)


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
    teleports when t is in `at_steps`, or when t = e·steps_per_epoch + j for e in `at_epochs` and
    j < per_epoch. Each teleport draws `n_samples` rows of (X, y) at random (default and maximum: the
    largest exact batch, `MLPStructure.max_batch(layers)`) and applies `ascent_teleport_` (method "ascent", with
    `ascent_steps` and `lr`) or `random_teleport_` (method "random", with `magnitude`), to the first `layers`
    hidden layers (default all).

    Optimizer state after a teleport: "keep" leaves the optimizer's state as it is (its momentum and
    second-moment estimates, built at the old weights, carry over to the new ones); "reset" gives it a fresh
    state (`reset_optimizer_state_`), as re-creating the optimizer would. `history` lists (step, result).
    """

    def __init__(self, model: nn.Sequential, optimizer: torch.optim.Optimizer, loss_fn: LossFn, X: torch.Tensor,
                 y: torch.Tensor, *, at_steps: Iterable[int] = (), at_epochs: Iterable[int] = (),
                 steps_per_epoch: int | None = None, per_epoch: int = 1, n_samples: int | None = None,
                 layers: int | None = None, method: str = "ascent", ascent_steps: int = 10, lr: float | None = None,
                 magnitude: float | Sequence[float] = 0.3, state: str = "keep", rtol: float = DEFAULT_RTOL,
                 generator: torch.Generator | None = None) -> None:
        s = inspect_mlp(model)
        limit = s.max_batch(layers)
        n = limit if n_samples is None else n_samples
        if n > limit:
            raise ArchitectureError(f"n_samples={n} is too large for an exact action: a teleport batch must not "
                                    f"exceed a teleported hidden layer's input width{' plus 1' if s.bias else ''} "
                                    f"({limit})")
        if not 1 <= n <= X.shape[0]:
            raise ConfigError(f"n_samples must be in 1..{X.shape[0]} (the rows of X), got {n}")
        if state not in STATE_POLICIES:
            raise ConfigError(f"state must be one of {STATE_POLICIES}, got {state!r}")
        if method not in ("ascent", "random"):
            raise ConfigError(f"method must be 'ascent' or 'random', got {method!r}")
        epochs = list(at_epochs)
        if epochs and not steps_per_epoch:
            raise ConfigError("at_epochs needs steps_per_epoch")
        self.schedule = frozenset(at_steps) | {e * steps_per_epoch + j for e in epochs for j in range(per_epoch)}
        self.model, self.optimizer, self.loss_fn, self.X, self.y = model, optimizer, loss_fn, X, y
        self.n_samples, self.layers, self.method, self.ascent_steps, self.lr = n, layers, method, ascent_steps, lr
        self.magnitude, self.state, self.rtol, self.generator = magnitude, state, rtol, generator
        self.steps_taken = 0
        self.history: list[tuple[int, TeleportResult]] = []

    @property
    def seconds(self) -> float:
        """Time spent teleporting so far."""
        return sum(r.seconds for _, r in self.history)

    def step(self) -> TeleportResult | None:
        """Count one training step; teleport first if it is scheduled. Returns what the teleport did, or None."""
        t = self.steps_taken
        self.steps_taken += 1
        if t not in self.schedule:
            return None
        t0 = time.perf_counter()
        idx = torch.randperm(self.X.shape[0], generator=self.generator)[: self.n_samples].to(self.X.device)
        X, y = self.X[idx], self.y[idx]
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
        return r
