"""The paper's learned methods: LSTMs over the flattened gradients of one network shape (Zhao et al., 2024).

m1 (`UpdateNet`) reads every layer's gradients and gives the update; m2 (one `TeleNet` per hidden layer) reads
the gradients of the layer pair around it and gives the group element g = I + T, optionally gated, and
optionally a GD step size (LSTM(lr,tele)). With `progress`, both also read VeLO's progress features of t/T
(`metatele.learned.nets.progress_features`; T is the method's `clock`, set per run by
`metatele.methods.set_horizon`), so that they know how long the run is. Three registered variants:
"lstm-lr-tele", "lstm-update", "lstm-update-tele". Shapes: grads[m] (B, d_{m+1}, d_m).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
from torch import nn

from metatele import checks
from metatele.learned.base import LearnedSpec, MetaOptimizer, register_learned
from metatele.learned.nets import (PREPROCESSING, PROGRESS_CENTRES, UPDATE_FORMS, LSTMState, TeleNet, UpdateNet,
                                   learned_lr, progress_features)
from metatele.methods.base import Horizon, Proposal, add_update, chain
from metatele.methods.teleports import LieTeleport, decay_teleport

__all__ = ["LSTMSpec", "LSTMOptimizer", "LearnedUpdate", "LearnedTeleport"]


@dataclass(frozen=True)
class LSTMSpec(LearnedSpec):
    """widths: the network shape the nets are built for; hidden: LSTM size; preprocessing of the gradients
    (`metatele.learned.nets.preprocess`); magnitude: teleport ‖T‖_F (× a learned gate if `gate`); exact: exact
    group action (else the paper's first-order one); out_scale: m1's output scale ("direct" form); update_form:
    "direct" (the paper: m1 outputs the update), "residual" or "gain" (a learned GD step with a zero-initialized
    learned part, see `UpdateNet`); gate_bias: the gate starts at sigmoid(gate_bias) (2: open, 0.88; −2: nearly
    closed, 0.12); teleport_decay: > 0 scales the teleport magnitude by exp(−t/teleport_decay) at step t;
    progress: m1 and m2 also read the progress features of t/T (the round-2 checkpoints, written before this
    field existed, have none)."""

    widths: tuple[int, ...] = ()
    hidden: int = 300
    preprocessing: str = "raw"
    magnitude: float = 0.01
    exact: bool = True
    gate: bool = False
    out_scale: float = 0.1
    update_form: str = "direct"
    gate_bias: float = 2.0
    teleport_decay: float = 0.0
    progress: bool = False
    added_fields: ClassVar[tuple[str, ...]] = ("progress",)  # round-2 checkpoints have no such key

    def check(self) -> None:
        object.__setattr__(self, "widths", checks.widths("widths", self.widths))
        checks.integer("hidden", self.hidden, 1, checks.MAX_HIDDEN)
        checks.choice("preprocessing", self.preprocessing, PREPROCESSING)
        checks.choice("update_form", self.update_form, UPDATE_FORMS)
        checks.positive_float("magnitude", self.magnitude)
        checks.positive_float("out_scale", self.out_scale)
        checks.finite_float("gate_bias", self.gate_bias)
        checks.nonneg_float("teleport_decay", self.teleport_decay)
        checks.boolean("exact", self.exact)
        checks.boolean("gate", self.gate)
        checks.boolean("progress", self.progress)

    @property
    def fixed_widths(self) -> tuple[int, ...]:
        return self.widths


def _flat(grads: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    B = grads[0].shape[0]
    return [g.reshape(B, -1) for g in grads]


def _steps(weights: Sequence[torch.Tensor]) -> torch.Tensor:
    """Steps taken so far, (B,) zeros: the counter of a transform with progress features."""
    w = weights[0]
    return torch.zeros(w.shape[0], device=w.device, dtype=w.dtype)


def _progress(clock: Horizon | None, t: torch.Tensor | None) -> torch.Tensor | None:
    """The progress features (B, len(PROGRESS_CENTRES)) after t steps of a run of clock.steps, or None."""
    return None if clock is None or t is None else progress_features(t, clock.steps)


@dataclass
class LearnedUpdate:
    """m1 as an update rule: adds m1(flattened gradients[, progress features]) to the update. State: the LSTM
    state, or with a `clock` (progress features) (LSTM state, steps taken (B,))."""

    net: UpdateNet
    sizes: list[int]
    clock: Horizon | None = None

    def init(self, weights: Sequence[torch.Tensor]) -> LSTMState | tuple[LSTMState, torch.Tensor]:
        w = weights[0]
        lstm = self.net.lstm.init_state(w.shape[0], w.device, w.dtype)
        return lstm if self.clock is None else (lstm, _steps(weights))

    def propose(self, prop: Proposal, grads: Sequence[torch.Tensor], state: Any, *,
                weights: Sequence[torch.Tensor]) -> tuple[Proposal, Any]:
        lstm, t = state if self.clock is not None else (state, None)
        u, lstm = self.net(torch.cat(_flat(grads), dim=1), lstm, _progress(self.clock, t))
        prop = add_update(prop, [c.view_as(g) for c, g in zip(u.split(self.sizes, dim=1), grads)])
        return prop, (lstm if t is None else (lstm, t + 1))


@dataclass
class LearnedTeleport:
    """m2 as a teleport policy: one TeleNet per hidden layer gives T_m, normalized to `magnitude` (× its gate).
    With `step_size`, the nets' step-size heads (averaged over layers) also give a GD update lr·g. State: the
    LSTM states, or with a `clock` (progress features) (LSTM states, steps taken (B,))."""

    nets: nn.ModuleList
    magnitude: float
    exact: bool
    step_size: bool = False
    clock: Horizon | None = None

    def init(self, weights: Sequence[torch.Tensor]) -> list[LSTMState] | tuple[list[LSTMState], torch.Tensor]:
        w = weights[0]
        lstm = [net.lstm.init_state(w.shape[0], w.device, w.dtype) for net in self.nets]
        return lstm if self.clock is None else (lstm, _steps(weights))

    def propose(self, prop: Proposal, grads: Sequence[torch.Tensor], state: Any, *,
                weights: Sequence[torch.Tensor]) -> tuple[Proposal, Any]:
        lstm, steps = state if self.clock is not None else (state, None)
        extra = _progress(self.clock, steps)
        flat = _flat(grads)
        T, mags, lrs, new_state = [], [], [], []
        for m, net in enumerate(self.nets):
            t, gate, lr, s = net(torch.cat([flat[m], flat[m + 1]], dim=1), lstm[m], extra)
            new_state.append(s)
            T.append(t)
            mags.append(self.magnitude if gate is None else self.magnitude * gate)
            if lr is not None:
                lrs.append(lr)
        info = dict(prop.info)
        info["teleport_magnitude"] = torch.stack([torch.as_tensor(e).detach().mean() for e in mags]).mean()
        prop = replace(prop, teleport=LieTeleport(T, mags, self.exact), info=info)
        if self.step_size:  # LSTM(lr,tele): plain GD with the learned step size
            lr = learned_lr(torch.stack(lrs).mean(0))
            prop = add_update(prop, [lr[:, None, None] * g for g in grads])
            prop.info["lr"] = lr
        return prop, (new_state if steps is None else (new_state, steps + 1))


class LSTMOptimizer(MetaOptimizer):
    """The paper's family. update: an m1 LSTM; teleport: m2 LSTMs; step_size: m2 also gives a GD step size
    (then the update is that GD step, as in LSTM(lr,tele)). With spec.progress, every net also reads the progress
    features of the run (the method's `clock`)."""

    def __init__(self, spec: LSTMSpec, *, update: bool, teleport: bool, step_size: bool = False) -> None:
        super().__init__(spec)
        w = spec.widths
        self.sizes = [a * b for a, b in zip(w[1:], w[:-1])]
        rule = policy = None
        clock, extra = (self.clock, len(PROGRESS_CENTRES)) if spec.progress else (None, 0)
        if update:
            self.update = UpdateNet(sum(self.sizes), spec.hidden, spec.preprocessing, spec.out_scale, spec.update_form,
                                    n_extra=extra)
            rule = LearnedUpdate(self.update, self.sizes, clock)
        if teleport:
            self.tele = nn.ModuleList(TeleNet(self.sizes[m] + self.sizes[m + 1], w[m + 1], spec.hidden,
                                              spec.preprocessing, spec.gate, step_size, spec.gate_bias, extra)
                                      for m in range(len(w) - 2))
            policy = LearnedTeleport(self.tele, spec.magnitude, spec.exact, step_size, clock)
            if spec.teleport_decay > 0:
                policy = chain(policy, decay_teleport(spec.teleport_decay))
        self.compose(rule, policy)


register_learned("lstm-lr-tele", LSTMOptimizer, LSTMSpec, update=False, teleport=True, step_size=True)
register_learned("lstm-update", LSTMOptimizer, LSTMSpec, update=True, teleport=False)
register_learned("lstm-update-tele", LSTMOptimizer, LSTMSpec, update=True, teleport=True)
