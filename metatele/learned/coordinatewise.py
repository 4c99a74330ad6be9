"""Size-agnostic learned methods: their parameters do not depend on the network's widths or depth.

- m1 `CoordUpdate`: one LSTM cell shared by every weight of every layer (rows = tasks × weights), reading
  scale-free per-weight features; it gives per-coordinate gains on a self-calibrated GD step,

      u_m = e^{log_lr} · (rms(W_m) / rms(g_m at step 0)) · g_m ⊙ GAIN_MAX^tanh(o),   o = head(LSTM(features)),

  with the head initialized at zero, so that an untrained m1 is GD whose step is relative to the weights'
  scale and to the first gradient's scale (the same trajectory if the loss is multiplied by a constant).
- m2 for hidden layer m (width k_m, any k_m): a direction T_m ∈ gl(k_m) scaled to a magnitude × a learned gate.
  The gate comes from `LayerGate`, an LSTM over per-layer scalar features, shared by all hidden layers.
  Two directions are offered:
  * `SteepestDirection`: the analytic steepest-ascent direction of ‖∇L‖² in the Lie algebra at g = I, computed
    on the step's teleport data when the teleport is applied (`SteepestTeleport`);
  * `BilinearDirection`: T_ij = φ(u_i)ᵀψ(u_j)/√E + a·M1 + b·M2 from per-neuron embeddings u_i of the rows and columns of
    the gradients and weights around the layer, plus the two equivariant matrices M1 = W_{m+1}ᵀ G_{m+1} and
    M2 = G_m W_mᵀ (normalized) with per-task coefficients (a, b) from `LayerGate`. Permuting the hidden neurons
    permutes T's rows and columns alike (permutation-equivariant).
Registered variants: "any-update" (m1 alone), "any-update-tele" (m1 + steepest), "any-update-tele-bilinear".
Shapes: weights[m], grads[m] (B, d_{m+1}, d_m) for tasks; m1 (`AnyUpdate`) takes any (B, ...) tensors (biases,
convolution kernels, norm scales, embeddings, scalars); features (B, P, F) with P the total number of weights.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import torch
from torch import nn

from metatele import checks
from metatele.learned.base import LearnedSpec, MetaOptimizer, register_learned
from metatele.learned.nets import TINY, gains, rms, scaled_linear, sqrt0
from metatele.methods.base import Proposal, Teleport, add_update, chain
from metatele.methods.teleports import LieTeleport, decay_teleport, no_teleport, rescale_ascent
from metatele.tasks.base import Symmetry, TaskBatch, TeleportData, has_bias
from metatele.teleport.action import normalize, rescale, teleport
from metatele.teleport.ascent import steepest_direction

__all__ = ["COORD_FEATURES", "LAYER_FEATURES", "CoordState", "CoordUpdate", "AnyUpdate", "LayerGate",
           "BilinearTeleNet", "SteepestTeleport", "Direction", "SteepestDirection", "BilinearDirection", "AnyTeleport",
           "CoordinatewiseSpec", "CoordinatewiseOptimizer", "NOMINAL_RELATIVE_STEP"]

COORD_FEATURES = 9
LAYER_FEATURES = 8
NEURON_FEATURES = 6
NOMINAL_RELATIVE_STEP = 0.2  # first GD step relative to the weights' scale; tuned GD gives 0.1–3 across our laws
CHUNK_ABOVE, CHUNK_ROWS = 1 << 16, 1 << 12  # m1's LSTM on more (task, weight) rows than CHUNK_ABOVE runs in chunks


def _flat(x: torch.Tensor) -> torch.Tensor:
    """(B, ...) → (B, numel per task); a (B,) tensor (a scalar parameter) becomes (B, 1)."""
    return x.reshape(x.shape[0], -1)


def _bcast(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return x.view(-1, *([1] * (like.dim() - 1)))


@dataclass
class CoordState:
    """m1's state: LSTM (h, c) per weight (B, P, H), momentum and second moment per tensor, the first
    gradient's RMS per tensor (B,), and the steps taken (B,)."""

    h: torch.Tensor
    c: torch.Tensor
    mom: list[torch.Tensor]
    sq: list[torch.Tensor]
    g0: list[torch.Tensor]
    count: torch.Tensor


def _layer_flags(m: int, n: int) -> tuple[float, float]:
    return float(m == 0), float(m == n - 1)


class CoordUpdate(nn.Module):
    """m1: a coordinatewise LSTM (hidden `size`) over COORD_FEATURES per weight, and its gains head."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        self.cell = nn.LSTMCell(COORD_FEATURES, size)
        self.head = scaled_linear(size, 1, scale=0.0)
        self.log_lr = nn.Parameter(torch.tensor(math.log(NOMINAL_RELATIVE_STEP)))

    def run(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The LSTM cell and head on rows x (R, F) with state h, c (R, size) → new h, c and the head's output (R, 1).
        Above CHUNK_ABOVE rows (a large model in `metatele.optim`; the meta-training tasks have fewer) the rows go
        in chunks of CHUNK_ROWS, whose working set stays in cache: the same values (checked bit for bit on a
        784-256-256-10 MLP), about 2× faster there on one core. Without autograd (evaluation, `rollout`) rows are
        chunked above CHUNK_ROWS already: 1.36–1.49× faster for the 64 default compare tasks, the same losses."""
        if x.shape[0] <= (CHUNK_ABOVE if torch.is_grad_enabled() else CHUNK_ROWS):
            h, c = self.cell(x, (h, c))
            return h, c, self.head(h)
        parts = []
        for xs, hs, cs in zip(x.split(CHUNK_ROWS), h.split(CHUNK_ROWS), c.split(CHUNK_ROWS)):
            hs, cs = self.cell(xs, (hs, cs))
            parts.append((hs, cs, self.head(hs)))
        h, c, o = (torch.cat(p) for p in zip(*parts))
        return h, c, o

    def features(self, weights: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], mom: list[torch.Tensor],
                 sq: list[torch.Tensor], g0: list[torch.Tensor], count: torch.Tensor) -> torch.Tensor:
        """(B, P, COORD_FEATURES): g, momentum and w normalized per tensor, the Adam ratio, and per-tensor
        progress log10(rms g / rms g0), weight sign bias mean(w)/rms(w), weight scale and layer-position flags."""
        out = []
        b1, b2 = 0.9, 0.999
        for m, (w, g, mo, s, r0) in enumerate(zip(weights, grads, mom, sq, g0)):
            B = w.shape[0]
            rg, rw = rms(g), rms(w)
            corr1 = (1 - b1 ** count).clamp_min(TINY)
            corr2 = (1 - b2 ** count).clamp_min(TINY)
            adam = (mo / _bcast(corr1, mo)) / (sqrt0(s / _bcast(corr2, s)) + _bcast(rg, s) * 1e-8)
            first, last = _layer_flags(m, len(weights))
            per_tensor = torch.stack([((rg / r0).log10() / 5).clamp(-2, 2), (_flat(w).mean(1) / rw).clamp(-1, 1),
                                      (rw.log10() / 2).clamp(-2, 2), torch.full_like(rg, first),
                                      torch.full_like(rg, last)], dim=1)
            per_coord = torch.stack([(g / _bcast(rg, g)).clamp(-10, 10), (mo / _bcast(rms(mo), mo)).clamp(-10, 10),
                                     adam.clamp(-5, 5), (w / _bcast(rw, w)).clamp(-10, 10)], dim=-1).reshape(B, -1, 4)
            out.append(torch.cat([per_coord, per_tensor[:, None, :].expand(B, per_coord.shape[1], 5)], dim=-1))
        return torch.cat(out, dim=1)


@dataclass
class AnyUpdate:
    """m1 as an update rule for any shape (see the module docstring)."""

    net: CoordUpdate

    def init(self, weights: Sequence[torch.Tensor]) -> CoordState:
        w = weights[0]
        B, P = w.shape[0], sum(x[0].numel() for x in weights)
        z = torch.zeros(B, P, self.net.size, dtype=w.dtype, device=w.device)
        zeros = [torch.zeros_like(x) for x in weights]
        return CoordState(z, z, zeros, [torch.zeros_like(x) for x in weights],
                          [torch.zeros(B, dtype=w.dtype, device=w.device) for _ in weights],
                          torch.zeros(B, dtype=w.dtype, device=w.device))

    def propose(self, prop: Proposal, grads: Sequence[torch.Tensor], state: CoordState, *,
                weights: Sequence[torch.Tensor]) -> tuple[Proposal, CoordState]:
        count = state.count + 1
        first = state.count == 0
        g0 = [torch.where(first, rms(g).detach(), r) for g, r in zip(grads, state.g0)]
        mom = [0.9 * m + 0.1 * g for m, g in zip(state.mom, grads)]
        sq = [0.999 * s + 0.001 * g * g for s, g in zip(state.sq, grads)]
        x = self.net.features(weights, grads, mom, sq, g0, count)
        B, P, F = x.shape
        h, c, o = self.net.run(x.reshape(B * P, F), state.h.reshape(B * P, -1), state.c.reshape(B * P, -1))
        gain = gains(o.view(B, P))
        update, start = [], 0
        for w, g, r0 in zip(weights, grads, g0):
            n = w[0].numel()
            step = self.net.log_lr.exp() * (rms(w) / r0)
            update.append(_bcast(step, g) * g * gain[:, start:start + n].view_as(g))
            start += n
        new = CoordState(h.view(B, P, -1), c.view(B, P, -1), mom, sq, g0, count)
        return add_update(prop, update), new


class LayerGate(nn.Module):
    """An LSTM over per-layer scalar features (shared by all hidden layers): per task and hidden layer a gate in
    (0, 1) on the teleport magnitude (starting near sigmoid(gate_bias)) and two coefficients (for the bilinear
    design)."""

    def __init__(self, size: int, gate_bias: float = 2.0) -> None:
        super().__init__()
        self.size, self.gate_bias = size, gate_bias
        self.cell = nn.LSTMCell(LAYER_FEATURES, size)
        self.head = scaled_linear(size, 3)

    def features(self, weights: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], g0: list[torch.Tensor]
                 ) -> torch.Tensor:
        """(B, hidden layers, LAYER_FEATURES) for the pair (W_m, W_{m+1}) around each hidden layer."""
        rows = []
        n = len(weights) - 1
        for m in range(n):
            feats = []
            for j in (m, m + 1):
                rg, rw = rms(grads[j]), rms(weights[j])
                feats += [((rg / g0[j]).log10() / 5).clamp(-2, 2), (rw.log10() / 2).clamp(-2, 2),
                          (_flat(weights[j]).mean(1) / rw).clamp(-1, 1)]
            first, last = _layer_flags(m, n)
            feats += [torch.full_like(feats[0], first), torch.full_like(feats[0], last)]
            rows.append(torch.stack(feats, dim=1))
        return torch.stack(rows, dim=1)

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x (B, n, F) → gate (B, n), coefficients (B, n, 2), new state ((B, n, H) each)."""
        B, n, F = x.shape
        h, c = self.cell(x.reshape(B * n, F), (state[0].reshape(B * n, -1), state[1].reshape(B * n, -1)))
        out = self.head(h).view(B, n, 3)
        return torch.sigmoid(out[..., 0] + self.gate_bias), out[..., 1:], (h.view(B, n, -1), c.view(B, n, -1))


class BilinearTeleNet(nn.Module):
    """Per-neuron embeddings → T_ij = φ(u_i)ᵀψ(u_j)/√E (permutation-equivariant), any width k."""

    def __init__(self, size: int, embed: int = 8) -> None:
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(NEURON_FEATURES, size), nn.Tanh(), nn.Linear(size, size), nn.Tanh())
        self.phi = nn.Linear(size, embed, bias=False)
        self.psi = nn.Linear(size, embed, bias=False)

    @staticmethod
    def neuron_features(W_in: torch.Tensor, W_out: torch.Tensor, G_in: torch.Tensor, G_out: torch.Tensor
                        ) -> torch.Tensor:
        """(B, k, NEURON_FEATURES): per hidden neuron i, the RMS of row i of G_m, W_m and of column i of G_{m+1},
        W_{m+1} (each relative to its tensor's RMS) and the normalized gradient-weight correlations of both."""
        def rel_rms(x: torch.Tensor, dim: int) -> torch.Tensor:
            return sqrt0(x.pow(2).mean(dim)) / _bcast(rms(x), x.pow(2).mean(dim))

        def corr(g: torch.Tensor, w: torch.Tensor, dim: int) -> torch.Tensor:
            return (g * w).mean(dim) / _bcast(rms(g) * rms(w), (g * w).mean(dim))

        return torch.stack([rel_rms(G_in, 2), rel_rms(W_in, 2), rel_rms(G_out, 1), rel_rms(W_out, 1),
                            corr(G_in, W_in, 2), corr(G_out, W_out, 1)], dim=-1).clamp(-10, 10)

    def forward(self, W_in: torch.Tensor, W_out: torch.Tensor, G_in: torch.Tensor, G_out: torch.Tensor,
                coef: torch.Tensor) -> torch.Tensor:
        """→ T (B, k, k); coef (B, 2) weighs the normalized W_outᵀG_out and G_in W_inᵀ."""
        u = self.embed(self.neuron_features(W_in, W_out, G_in, G_out))
        T = torch.bmm(self.phi(u), self.psi(u).transpose(1, 2)) / math.sqrt(self.phi.out_features)
        M1 = normalize(torch.bmm(W_out.transpose(1, 2), G_out), 1.0)
        M2 = normalize(torch.bmm(G_in, W_in.transpose(1, 2)), 1.0)
        return T + coef[:, 0, None, None] * M1 + coef[:, 1, None, None] * M2


@dataclass
class SteepestTeleport:
    """Teleport along the analytic steepest-ascent direction of ‖∇L‖² (computed on the step's teleport data;
    differentiable in the weights when they carry a graph), each layer's T_m scaled to magnitude[m] (B,)."""

    magnitude: list[torch.Tensor]

    def direction(self, weights: list[torch.Tensor], task: TaskBatch, data: TeleportData
                  ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The unscaled T_m (B, k_m, k_m) on `data` and the magnitudes to scale them to."""
        graph = torch.is_grad_enabled() and any(w.requires_grad for w in weights)
        G = steepest_direction(weights, task, data, X_pinv=data.X_pinv, skip_invalid=True, differentiable=graph)
        return G, self.magnitude

    def apply(self, weights: list[torch.Tensor], task: TaskBatch, step: int) -> list[torch.Tensor]:
        if task.symmetry is Symmetry.RESCALE:  # the steepest direction within the positive diagonal subgroup
            s = rescale_ascent(weights, task, step)
            return rescale(weights, [m[:, None] * d for m, d in zip(self.magnitude, s)])
        if task.symmetry is Symmetry.NONE:
            return no_teleport(weights, "SteepestTeleport")
        data = task.teleport_data(step)
        G, magnitude = self.direction(weights, task, data)
        return teleport(weights, data.batch.X, G, magnitude, act=task.activation, X_pinv=data.X_pinv,
                        skip_invalid=True, nearest=True, bias=has_bias(task))


class Direction(Protocol):
    """How m2 picks the teleport of each hidden layer, given the magnitudes (B,) per layer and the gate's
    coefficients coef (B, layers, 2)."""

    def __call__(self, weights: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], coef: torch.Tensor,
                 magnitude: list[torch.Tensor]) -> Teleport: ...


class SteepestDirection:
    """The analytic steepest-ascent direction, computed when the teleport is applied."""

    @classmethod
    def attach(cls, owner: nn.Module, spec: CoordinatewiseSpec) -> SteepestDirection:
        """The direction for a meta-optimizer `owner` (it has no meta-parameters)."""
        return cls()

    def __call__(self, weights: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], coef: torch.Tensor,
                 magnitude: list[torch.Tensor]) -> Teleport:
        return SteepestTeleport(magnitude)


@dataclass
class BilinearDirection:
    """T_m from `BilinearTeleNet`, applied as g_m = I + T_m (exact or the first-order action)."""

    net: BilinearTeleNet
    exact: bool = True

    @classmethod
    def attach(cls, owner: nn.Module, spec: CoordinatewiseSpec) -> BilinearDirection:
        """The direction for meta-optimizer `owner`, whose meta-parameters gain its net (`owner.bilinear`)."""
        owner.bilinear = BilinearTeleNet(spec.hidden)
        return cls(owner.bilinear, spec.exact)

    def __call__(self, weights: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], coef: torch.Tensor,
                 magnitude: list[torch.Tensor]) -> Teleport:
        k = [w.shape[1] for w in weights]  # W_{m+1}'s first k_m columns: without a bias column, if any
        T = [self.net(weights[m], weights[m + 1][..., : k[m]], grads[m], grads[m + 1][..., : k[m]], coef[:, m])
             for m in range(len(weights) - 1)]
        return LieTeleport(T, magnitude, self.exact)


@dataclass
class AnyTeleport:
    """m2 for any shape: `LayerGate` gates the magnitude of the teleport that `direction` gives."""

    gate: LayerGate
    magnitude: float
    direction: Direction

    def init(self, weights: Sequence[torch.Tensor]) -> tuple[tuple[torch.Tensor, torch.Tensor], list[torch.Tensor]]:
        w = weights[0]
        z = torch.zeros(w.shape[0], len(weights) - 1, self.gate.size, dtype=w.dtype, device=w.device)
        return (z, z), [torch.zeros(w.shape[0], dtype=w.dtype, device=w.device) for _ in weights]

    def propose(self, prop: Proposal, grads: Sequence[torch.Tensor],
                state: tuple[tuple[torch.Tensor, torch.Tensor], list[torch.Tensor]], *,
                weights: Sequence[torch.Tensor]) -> tuple[Proposal, tuple]:
        lstm_state, g0 = state
        g0 = [torch.where(r == 0, rms(g).detach(), r) for g, r in zip(grads, g0)]
        gate, coef, lstm_state = self.gate(self.gate.features(weights, grads, g0), lstm_state)
        mags = [self.magnitude * gate[:, m] for m in range(gate.shape[1])]
        info = dict(prop.info)
        info["teleport_magnitude"] = gate.detach().mean() * self.magnitude
        return replace(prop, teleport=self.direction(weights, grads, coef, mags), info=info), (lstm_state, g0)


@dataclass(frozen=True)
class CoordinatewiseSpec(LearnedSpec):
    """hidden: LSTM size of m1 and of the gate; magnitude: teleport ‖T‖_F × the learned gate; exact: exact group
    action for the bilinear direction (else first-order); gate_bias: the gate starts at sigmoid(gate_bias);
    teleport_decay: > 0 scales the teleport magnitude by exp(−t/teleport_decay) at step t."""

    hidden: int = 16
    magnitude: float = 0.01
    exact: bool = True
    gate_bias: float = 2.0
    teleport_decay: float = 0.0

    def check(self) -> None:
        checks.integer("hidden", self.hidden, 1, checks.MAX_HIDDEN)
        checks.positive_float("magnitude", self.magnitude)
        checks.finite_float("gate_bias", self.gate_bias)
        checks.nonneg_float("teleport_decay", self.teleport_decay)
        checks.boolean("exact", self.exact)


class CoordinatewiseOptimizer(MetaOptimizer):
    """The size-agnostic family: `CoordUpdate` as m1 and, if a `direction` class is given, a teleport policy
    along it, gated by `LayerGate`, as m2."""

    def __init__(self, spec: CoordinatewiseSpec, *,
                 direction: type[SteepestDirection] | type[BilinearDirection] | None) -> None:
        super().__init__(spec)
        self.update = CoordUpdate(spec.hidden)
        policy = None
        if direction is not None:
            self.gate = LayerGate(spec.hidden, spec.gate_bias)
            policy = AnyTeleport(self.gate, spec.magnitude, direction.attach(self, spec))
            if spec.teleport_decay > 0:
                policy = chain(policy, decay_teleport(spec.teleport_decay))
        self.compose(AnyUpdate(self.update), policy)


register_learned("any-update", CoordinatewiseOptimizer, CoordinatewiseSpec, direction=None)
register_learned("any-update-tele", CoordinatewiseOptimizer, CoordinatewiseSpec, direction=SteepestDirection)
register_learned("any-update-tele-bilinear", CoordinatewiseOptimizer, CoordinatewiseSpec, direction=BilinearDirection)
