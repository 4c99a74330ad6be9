"""`adafac` (and `adafac-tele`): a size-agnostic learned update rule that is exactly Adam when untrained, with an optional
gated, size-agnostic teleport (m2) on top.

For every parameter tensor P (B, *shape) — weights and biases alike, any shape — and every element, a small
MLP shared by all elements of all tensors reads per-element features and outputs two numbers (a, d):

    u = lr · (FAN_REF / fan_in)^p · [ 10^tanh(a) · adam + c · tanh(d) ],   lr = nominal_lr · e^{log_gain},
    p = tanh(fan_power) ∈ (−1, 1)

adam is Adam's bias-corrected direction m̂/(√v̂ + ε) (β = 0.9, 0.999, ε = 1e-8). The MLP's last layer starts at
zero and log_gain = fan_power = 0, so the untrained rule is exactly Adam at the spec's nominal_lr (NOMINAL_LR = 1e-3,
torch's default, unless a recipe sets it, e.g. to the Adam lr best across the meta-training problems). The output is bounded: per element
|u| ≤ lr·(FAN_REF/fan_in)^p·(10·|adam| + c). fan_in is the size of the last axis of a matrix (the μP-style factor
whose exponent p is learned, starting at 0 and bounded by μP's 1: a first run with p unbounded drove it to 2.7 and its
validation loss up); vectors (biases) have no fan-in factor.

Features (`features`, as in learned_optimization's AdafacMLPLOpt, each normalized per tensor by its RMS):
g, p, momenta at β ∈ {0.9, 0.99, 0.999}, √v (β 0.999), m·v^{-1/2} (×3), v^{-1/2}, Adam's direction, Adafactor
row/column factors at the three decays (g·v̂^{-1/2} ×3, row^{-1/2} ×3, column^{-1/2} ×3; for vectors v̂ = v of
that decay), m·v̂^{-1/2} (×3) — 23 channels; then per tensor log10(rms g / rms g_0)/5, and VeLO's progress
features tanh(10(t/T − c)), c ∈ {.03, .1, .2, .4, .6, .8, .9, 1, 1.1}, which are not normalized. T is the run's
horizon (the method's `clock`, `metatele.methods.set_horizon`); metatele.methods.DEFAULT_HORIZON when unknown.
Shapes: weights[m], grads[m] (B, ...) with a leading task dimension B.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from metatele import checks
from metatele.learned.base import LearnedSpec, MetaOptimizer, register_learned
from metatele.learned.coordinatewise import LayerGate
from metatele.learned.nets import PROGRESS_CENTRES, progress_features, rms, sqrt0
from metatele.methods.base import Horizon, Proposal, add_update, per_task
from metatele.tasks.base import Symmetry
from metatele.teleport.action import rescale, teleport
from metatele.teleport.ascent import rescale_direction, steepest_direction

if TYPE_CHECKING:
    from metatele.tasks.base import TaskBatch, TeleportData

__all__ = ["NOMINAL_LR", "FAN_REF", "ELEMENT_FEATURES", "N_INPUTS", "AdafacSpec", "AdafacNet", "AdafacState",
           "AdafacUpdate", "GatedSteepestTeleport", "GatedRescale", "SteepestGate", "AdafacOptimizer", "with_guards"]

NOMINAL_LR = 1e-3         # the default nominal lr: torch.optim.Adam's default
FAN_REF = 32              # fan-in at which the μP factor is 1
B1, B2, EPS = 0.9, 0.999, 1e-8
DECAYS = (0.9, 0.99, 0.999)
ELEMENT_FEATURES = 23
N_INPUTS = ELEMENT_FEATURES + 1 + len(PROGRESS_CENTRES)
TINY = 1e-30


@dataclass(frozen=True)
class AdafacSpec(LearnedSpec):
    """What rebuilds an adafac optimizer (stored in checkpoint metadata); `method` is "adafac" or "adafac-tele".

    hidden: the MLP's width (two hidden layers); mix: c, the bound of the free term (0: no free term, the rule is a
    learned per-element gain on Adam: a free term does not vanish at a minimum, and a drift of 3e-5 per step — an
    output bias of 0.01 at lr 10^-1.5 — costs the validation problems 0.9 in mean log10 loss); nominal_lr: the untrained rule is
    Adam at this lr (the round-3 checkpoints, written before the field, use NOMINAL_LR); magnitude: the teleport's
    ‖T‖_F before the gate; gate_bias: the gate starts at sigmoid(gate_bias); gate_hidden: the gate LSTM's size;
    every: teleport at steps 0, every, 2·every, …; group: the teleport's group, "gl" (the exact data-dependent
    GL action on the teleport data along the ascent of ‖∇L‖², gated off where it is impossible) or "diag" (the
    positive rescalings of hidden units along the descent of ‖∇L‖², `GatedRescale`, exact on any data: biases,
    mini-batches and more samples than widths included, so never gated off).

    Guards against the two ways a long run rose above its start (docs/bench.md, "Round 10"); 0 turns each off:
    warmup: the update is scaled by min(1, t/warmup) at step t = 1, 2, … (an Adam-like first step moves every
    weight by ~lr and overshot on deep nets); floor: Adam's denominator is max(√v̂, floor·rms(g₀)) per tensor, g₀
    the tensor's first gradient (once the gradient falls to float32's noise, v̂ decays and lr/√v̂ grows until the
    run is linearly unstable: the floor bounds the effective lr at lr/(floor·rms(g₀))).
    """

    hidden: int = 16
    mix: float = 0.1
    magnitude: float = 0.05
    gate_bias: float = -3.0
    gate_hidden: int = 8
    every: int = 1
    nominal_lr: float = NOMINAL_LR
    group: str = "gl"
    warmup: int = 0
    floor: float = 0.0
    added_fields: ClassVar[tuple[str, ...]] = ("nominal_lr", "group", "warmup", "floor")

    def check(self) -> None:
        checks.integer("hidden", self.hidden, 1, 1024)
        checks.integer("gate_hidden", self.gate_hidden, 1, 1024)
        checks.integer("every", self.every, 1, 10**6)
        if isinstance(self.mix, bool) or not isinstance(self.mix, (int, float)) or not 0 <= self.mix <= 10:
            raise ValueError(f"mix must be 0 (no free term) or a number in (0, 10], got {self.mix!r}")
        checks.positive_float("magnitude", self.magnitude, 10.0)
        checks.finite_float("gate_bias", self.gate_bias)
        checks.positive_float("nominal_lr", self.nominal_lr, 10.0)
        checks.choice("group", self.group, ("gl", "diag"))
        checks.integer("warmup", self.warmup, 0, 10**6)
        if self.floor != 0:  # 0: off
            checks.positive_float("floor", self.floor, 1.0)


class AdafacNet(nn.Module):
    """The per-element MLP N_INPUTS → hidden → hidden → 2 (ReLU, last layer zero) and the scalars
    log_gain (lr = nominal_lr·e^{log_gain}), fan_power (p = tanh(fan_power)) and log_mix (c = mix·e^{log_mix})."""

    def __init__(self, hidden: int, mix: float, nominal_lr: float = NOMINAL_LR) -> None:
        super().__init__()
        self.mix, self.nominal_lr = mix, nominal_lr
        self.mlp = nn.Sequential(nn.Linear(N_INPUTS, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 2))
        with torch.no_grad():
            self.mlp[-1].weight.zero_()
            self.mlp[-1].bias.zero_()
        self.log_gain = nn.Parameter(torch.zeros(()))
        self.fan_power = nn.Parameter(torch.zeros(()))
        self.log_mix = nn.Parameter(torch.zeros(()))


@dataclass
class AdafacState:
    """Per tensor: momenta at DECAYS, Adam's first moment (β1), second moment (β2), Adafactor row and column
    accumulators at DECAYS (for vectors: full second moments); the first gradient's RMS (B,); steps taken (B,)."""

    mom: list[list[torch.Tensor]]
    nu: list[torch.Tensor]
    rows: list[list[torch.Tensor]]
    cols: list[list[torch.Tensor]]
    g0: list[torch.Tensor]
    count: torch.Tensor


def _normalize(x: torch.Tensor) -> torch.Tensor:
    """Channels (B, N, F) scaled to unit RMS over the tensor's elements, per task and channel."""
    return x / x.pow(2).mean(1, keepdim=True).add(TINY).sqrt()


def _fan_in(w: torch.Tensor) -> int | None:
    """The fan-in of a matrix (B, out, in): in; None for a vector (B, n)."""
    return w.shape[-1] if w.dim() >= 3 else None


@dataclass
class AdafacUpdate:
    """The update rule (a `metatele.methods.Transform`); `clock` holds T of the progress features; warmup and
    floor are `AdafacSpec`'s guards."""

    net: AdafacNet
    clock: Horizon = field(default_factory=Horizon)
    warmup: int = 0
    floor: float = 0.0

    def init(self, weights: Sequence[torch.Tensor]) -> AdafacState:
        w0 = weights[0]
        B = w0.shape[0]
        z = lambda w: torch.zeros_like(w)  # noqa: E731
        rows = [[torch.zeros_like(w[..., 0]) if w.dim() >= 3 else z(w) for _ in DECAYS] for w in weights]
        cols = [[torch.zeros_like(w[..., 0, :]) if w.dim() >= 3 else z(w) for _ in DECAYS] for w in weights]
        return AdafacState([[z(w) for _ in DECAYS] for w in weights], [z(w) for w in weights], rows, cols,
                           [torch.zeros(B, dtype=w0.dtype, device=w0.device) for _ in weights],
                           torch.zeros(B, dtype=w0.dtype, device=w0.device))

    def features(self, w: torch.Tensor, g: torch.Tensor, mom: list[torch.Tensor], nu: torch.Tensor,
                 rows: list[torch.Tensor], cols: list[torch.Tensor], g0: torch.Tensor, count: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs (B, N, N_INPUTS), Adam's direction (B, …)) for one tensor of N elements per task."""
        B = w.shape[0]
        m_hat = mom[0] / per_task(1 - B1 ** count, g)
        v_hat = nu / per_task(1 - B2 ** count, g)
        den = sqrt0(v_hat)
        if self.floor:
            den = torch.maximum(den, self.floor * per_task(g0, g))
        adam = m_hat / (den + EPS)
        rs_v = (nu + TINY).rsqrt()
        chans = [g, w, *mom, sqrt0(nu), *(m * rs_v for m in mom), rs_v, adam]
        fac, rrow, rcol = [], [], []
        for r, c in zip(rows, cols):
            if w.dim() >= 3:
                vh = r[..., :, None] * c[..., None, :] / r.mean(-1, keepdim=True)[..., None].add(TINY)
                rrow.append((r[..., :, None] + TINY).rsqrt().expand_as(g))
                rcol.append((c[..., None, :] + TINY).rsqrt().expand_as(g))
            else:
                vh = r
                rrow.append((r + TINY).rsqrt())
                rcol.append((c + TINY).rsqrt())
            fac.append((vh + TINY).rsqrt())
        chans += [g * f for f in fac] + rrow + rcol + [m * f for m, f in zip(mom, fac)]
        x = _normalize(torch.stack([ch.reshape(B, -1) for ch in chans], dim=-1))
        x = x.clamp(-10, 10)
        task_feats = torch.cat([((rms(g) + TINY) / (g0 + TINY)).log10().div(5).clamp(-2, 2)[:, None],
                              progress_features(count - 1, self.clock.steps)], dim=1)
        x = torch.cat([x, task_feats[:, None, :].expand(B, x.shape[1], task_feats.shape[1])], dim=-1)
        return x, adam

    def propose(self, prop: Proposal, grads: Sequence[torch.Tensor], state: AdafacState, *,
                weights: Sequence[torch.Tensor]) -> tuple[Proposal, AdafacState]:
        count = state.count + 1
        first = state.count == 0
        g0 = [torch.where(first, rms(g).detach(), r) for g, r in zip(grads, state.g0)]
        mom = [[b * m + (1 - b) * g for b, m in zip(DECAYS, ms)] for ms, g in zip(state.mom, grads)]
        nu = [B2 * v + (1 - B2) * g * g for v, g in zip(state.nu, grads)]
        rows, cols = [], []
        for rs, cs, g in zip(state.rows, state.cols, grads):
            g2 = g * g + TINY
            if g.dim() >= 3:
                rows.append([b * r + (1 - b) * g2.mean(-1) for b, r in zip(DECAYS, rs)])
                cols.append([b * c + (1 - b) * g2.mean(-2) for b, c in zip(DECAYS, cs)])
            else:
                rows.append([b * r + (1 - b) * g2 for b, r in zip(DECAYS, rs)])
                cols.append([b * c + (1 - b) * g2 for b, c in zip(DECAYS, cs)])
        net = self.net
        lr = net.nominal_lr * net.log_gain.exp()
        mix = net.mix * net.log_mix.exp()
        update = []
        for i, (w, g) in enumerate(zip(weights, grads)):
            # Adam's own first moment is the β1 = 0.9 momentum (DECAYS[0])
            x, adam = self.features(w, g, mom[i], nu[i], rows[i], cols[i], g0[i], count)
            out = net.mlp(x)
            a, d = out[..., 0].view_as(g), out[..., 1].view_as(g)
            fan = _fan_in(w)
            scale = lr if fan is None else lr * (FAN_REF / fan) ** torch.tanh(net.fan_power)
            step = 10 ** torch.tanh(a) * adam
            u = scale * (step + mix * torch.tanh(d) if net.mix else step)
            update.append(u * per_task(count.clamp(max=self.warmup) / self.warmup, g) if self.warmup else u)
        info = dict(prop.info)
        info["lr"] = lr.detach().expand(grads[0].shape[0])
        return replace(add_update(prop, update), info=info), AdafacState(mom, nu, rows, cols, g0, count)


@dataclass
class GatedSteepestTeleport:
    """Teleport each hidden layer along the steepest-ascent direction of ‖∇L‖² (round 2's design,
    `metatele.teleport.ascent.steepest_direction`, on the step's teleport data, treated as a constant of the
    weights) by the exact GL action, with ‖T_m‖_F = magnitude[m] (B,). Gated off (the weights unchanged, counted
    in `skipped`) where the exact action is impossible: a task without the GL symmetry (biases, more samples than
    a hidden layer's input width), and per task where a layer input is rank-deficient."""

    magnitude: list[torch.Tensor]
    skipped: list[int] = field(default_factory=lambda: [0])

    def direction(self, weights: list[torch.Tensor], task: TaskBatch, data: TeleportData
                  ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The unscaled T_m (B, k_m, k_m) on `data` and the magnitudes to scale them to (as
        `metatele.optim.LearnedOptimizer` asks a teleport)."""
        return steepest_direction(weights, task, data, X_pinv=data.X_pinv, skip_invalid=True), self.magnitude

    def apply(self, weights: list[torch.Tensor], task: TaskBatch, step: int) -> list[torch.Tensor]:
        if task.symmetry is not Symmetry.GL:
            self.skipped[0] += 1
            return weights
        data = task.teleport_data(step)
        G, _ = self.direction(weights, task, data)
        return teleport(weights, data.batch.X, G, self.magnitude, act=task.activation, X_pinv=data.X_pinv,
                        skip_invalid=True, nearest=True)


@dataclass
class GatedRescale:
    """Rescale the units of each hidden layer m by g_m = diag(e^{s_m}) (`action.rescale`), s_m (B, k_m): the gated
    magnitude times the steepest-*descent* direction of ‖∇L‖² within the positive rescalings
    (`ascent.rescale_direction`, from the step's gradient, a constant of the weights), which moves each unit toward
    equal gradient norms on its incoming and outgoing weights. Descent, not the paper's ascent: under an Adam-like
    update ascent compounds (experiments/bench/rescale_probe.py: at 0.01 per step the untrained twin ended higher on
    all 10 train and validation problems, by up to 6.8 decades, while descent at 0.05 ended lower on 7 of 10). The loss is
    unchanged on any data (LeakyReLU is positively homogeneous), so it is never gated off; `rescaling` is what
    `metatele.optim.LearnedOptimizer` applies to a user's chain."""

    rescaling: list[torch.Tensor]

    def apply(self, weights: list[torch.Tensor], task: TaskBatch, step: int) -> list[torch.Tensor]:
        return rescale(weights, self.rescaling)


@dataclass
class SteepestGate:
    """m2 as a transform: `LayerGate` (an LSTM over per-layer scalar features, shared by all hidden layers) gives
    each hidden layer's gate in (0, 1); the teleport, proposed at steps 0, every, 2·every, …, is
    `GatedSteepestTeleport` (group "gl") or `GatedRescale` (group "diag") with magnitude × gate."""

    gate: LayerGate
    magnitude: float
    every: int = 1
    group: str = "gl"

    def init(self, weights: Sequence[torch.Tensor]) -> tuple[Any, list[torch.Tensor], int]:
        w = weights[0]
        z = torch.zeros(w.shape[0], max(len(weights) - 1, 1), self.gate.size, dtype=w.dtype, device=w.device)
        return (z, z), [torch.zeros(w.shape[0], dtype=w.dtype, device=w.device) for _ in weights], 0

    def propose(self, prop: Proposal, grads: Sequence[torch.Tensor], state: tuple[Any, list[torch.Tensor], int], *,
                weights: Sequence[torch.Tensor]) -> tuple[Proposal, tuple[Any, list[torch.Tensor], int]]:
        lstm, g0, t = state
        if len(weights) < 2 or any(w.dim() != 3 for w in weights):  # no hidden layer to act on
            return prop, (lstm, g0, t + 1)
        g0 = [torch.where(r == 0, rms(g).detach(), r) for g, r in zip(grads, g0)]
        if t % self.every:
            return prop, (lstm, g0, t + 1)
        gate, _, lstm = self.gate(self.gate.features(weights, grads, g0), lstm)
        info = dict(prop.info)
        info["teleport_magnitude"] = gate.detach().mean(1) * self.magnitude
        mags = [self.magnitude * gate[:, m] for m in range(gate.shape[1])]
        if self.group == "diag":
            d = rescale_direction([g.detach() for g in grads])
            tele: GatedSteepestTeleport | GatedRescale = GatedRescale([-a[:, None] * dm for a, dm in zip(mags, d)])
        else:
            tele = GatedSteepestTeleport(mags)
        return replace(prop, teleport=tele, info=info), (lstm, g0, t + 1)


class AdafacOptimizer(MetaOptimizer):
    """The learned family (registered as "adafac" and, with `teleport`, "adafac-tele"): `AdafacUpdate`, chained
    with `SteepestGate` if `teleport`. `horizon` sets T of the progress features for the next runs; `label`, if
    set, replaces the registered name in reports (ablation variants)."""

    def __init__(self, spec: AdafacSpec, *, teleport: bool) -> None:
        super().__init__(spec)
        self.net = AdafacNet(spec.hidden, spec.mix, spec.nominal_lr)
        self.rule = AdafacUpdate(self.net, self.clock, spec.warmup, spec.floor)
        self.label: str | None = None
        policy = None
        if teleport:
            self.gate = LayerGate(spec.gate_hidden, spec.gate_bias)
            policy = SteepestGate(self.gate, spec.magnitude, spec.every, spec.group)
        self.compose(self.rule, policy)

    @property
    def name(self) -> str:
        return self.label or self.spec.method


def with_guards(model: AdafacOptimizer, warmup: int, floor: float) -> AdafacOptimizer:
    """A copy of a trained adafac optimizer (same meta-parameters) with `AdafacSpec`'s guards set, e.g.
    `with_guards(load_pretrained("adafac-tele"), 5, 0.01)`: its long runs stop rising above their start, at a cost
    on the suite measured in docs/bench.md ("Round 10"). ValueError on invalid guard values."""
    if not isinstance(model, AdafacOptimizer):
        raise TypeError(f"with_guards takes an adafac optimizer, got {type(model).__name__}")
    guarded = AdafacOptimizer(replace(model.spec, warmup=warmup, floor=floor), teleport=model.teleports)
    guarded.load_state_dict(model.state_dict())
    guarded.metadata = dict(model.metadata)
    return guarded.to(next(model.parameters()).device)


register_learned("adafac", AdafacOptimizer, AdafacSpec, teleport=False)
register_learned("adafac-tele", AdafacOptimizer, AdafacSpec, teleport=True)
