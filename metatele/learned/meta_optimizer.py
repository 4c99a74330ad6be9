"""Learned methods: meta-parameters (the nets of `metatele.learned.nets`) plus the transforms that use them.

A `MetaOptimizer` is built from a `MetaOptSpec`: the method's `LearnedRecipe` (from the registry) says
which nets it owns, and its transform is the chain of the matching learned transforms, so it is a
`Method` like any baseline. Shapes: grads[m] (B, d_{m+1}, d_m).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from metatele.learned.coordinatewise import AnyTeleport, AnyUpdate, BilinearTeleNet, CoordUpdate, LayerGate
from metatele.methods.base import Composed, Proposal, Transform, add_update, chain
from metatele.methods.registry import LEARNED
from metatele.methods.teleports import LieTeleport, decay_teleport
from metatele.learned.nets import PREPROCESSING, UPDATE_FORMS, LSTMState, TeleNet, UpdateNet, learned_lr

__all__ = ["MetaOptSpec", "MetaOptimizer", "LearnedUpdate", "LearnedTeleport"]


@dataclass(frozen=True)
class MetaOptSpec:
    """Everything needed to rebuild a MetaOptimizer (stored in checkpoint metadata).

    hidden: LSTM size; magnitude: teleport ‖T‖_F (× a learned gate if `gate`); exact: exact group action
    (else the paper's first-order one); out_scale: m1's output scale ("direct" form); update_form: "direct"
    (the paper: m1 outputs the update), "residual" or "gain" (a learned GD step with a zero-initialized learned
    part, see `metatele.learned.nets.UpdateNet`); gate_bias: the gate starts at sigmoid(gate_bias) (2: open,
    0.88; −2: nearly closed, 0.12); teleport_decay: > 0 scales the teleport magnitude by exp(−t/teleport_decay)
    at step t (`metatele.methods.decay_teleport`).
    """

    method: str
    widths: tuple[int, ...]
    hidden: int
    preprocessing: str = "raw"
    magnitude: float = 0.01
    exact: bool = True
    gate: bool = False
    out_scale: float = 0.1
    update_form: str = "direct"
    gate_bias: float = 2.0
    teleport_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.update_form not in UPDATE_FORMS:
            raise ValueError(f"unknown update_form {self.update_form!r}; choose one of {', '.join(UPDATE_FORMS)}")
        if self.method not in LEARNED:
            raise ValueError(f"unknown learned method {self.method!r}; choose one of {', '.join(LEARNED)}")
        if self.preprocessing not in PREPROCESSING:
            raise ValueError(f"unknown preprocessing {self.preprocessing!r}; choose one of {', '.join(PREPROCESSING)}")


def _flat(grads: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    B = grads[0].shape[0]
    return [g.reshape(B, -1) for g in grads]


@dataclass
class LearnedUpdate:
    """m1 as an update rule: adds m1(flattened gradients) to the update."""

    net: UpdateNet
    sizes: list[int]

    def init(self, weights: Sequence[torch.Tensor]) -> LSTMState:
        w = weights[0]
        return self.net.lstm.init_state(w.shape[0], w.device, w.dtype)

    def propose(self, prop: Proposal, grads: Sequence[torch.Tensor], state: LSTMState, *,
                weights: Sequence[torch.Tensor]) -> tuple[Proposal, LSTMState]:
        u, state = self.net(torch.cat(_flat(grads), dim=1), state)
        return add_update(prop, [c.view_as(g) for c, g in zip(u.split(self.sizes, dim=1), grads)]), state


@dataclass
class LearnedTeleport:
    """m2 as a teleport policy: one TeleNet per hidden layer gives T_m, normalized to `magnitude` (× its gate).
    With `step_size`, the nets' step-size heads (averaged over layers) also give a GD update lr·g."""

    nets: nn.ModuleList
    magnitude: float
    exact: bool
    step_size: bool = False

    def init(self, weights: Sequence[torch.Tensor]) -> list[LSTMState]:
        w = weights[0]
        return [net.lstm.init_state(w.shape[0], w.device, w.dtype) for net in self.nets]

    def propose(self, prop: Proposal, grads: Sequence[torch.Tensor], state: list[LSTMState], *,
                weights: Sequence[torch.Tensor]) -> tuple[Proposal, list[LSTMState]]:
        flat = _flat(grads)
        T, mags, lrs, new_state = [], [], [], []
        for m, net in enumerate(self.nets):
            t, gate, lr, s = net(torch.cat([flat[m], flat[m + 1]], dim=1), state[m])
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
        return prop, new_state


class MetaOptimizer(nn.Module):
    """A learned method (the `Method` protocol) with its meta-parameters; see the registry's recipes."""

    def __init__(self, spec: MetaOptSpec) -> None:
        super().__init__()
        self.spec = spec
        self.metadata: dict[str, Any] = {}  # a loaded checkpoint's metadata (metatele.checkpoints)
        recipe = LEARNED[spec.method]
        w = spec.widths
        self.sizes = [a * b for a, b in zip(w[1:], w[:-1])]
        self.parts: list[Transform] = []
        if recipe.update == "lstm":
            self.update = UpdateNet(sum(self.sizes), spec.hidden, spec.preprocessing, spec.out_scale, spec.update_form)
            self.parts.append(LearnedUpdate(self.update, self.sizes))
        elif recipe.update == "coordinatewise":
            self.update = CoordUpdate(spec.hidden)
            self.parts.append(AnyUpdate(self.update))
        else:
            self.update = None
        if recipe.teleport == "lstm":
            self.tele = nn.ModuleList(TeleNet(self.sizes[m] + self.sizes[m + 1], w[m + 1], spec.hidden,
                                              spec.preprocessing, spec.gate, recipe.step_size, spec.gate_bias)
                                      for m in range(len(w) - 2))
            self.parts.append(LearnedTeleport(self.tele, spec.magnitude, spec.exact, recipe.step_size))
        elif recipe.teleport in ("steepest", "bilinear"):
            self.gate = LayerGate(spec.hidden)
            self.bilinear = BilinearTeleNet(spec.hidden) if recipe.teleport == "bilinear" else None
            self.parts.append(AnyTeleport(self.gate, spec.magnitude, recipe.teleport, self.bilinear, spec.exact))
        if recipe.teleport and spec.teleport_decay > 0:
            self.parts.append(decay_teleport(spec.teleport_decay))
        self.transform = chain(*self.parts)

    @property
    def name(self) -> str:
        return self.spec.method

    def init_state(self, weights: Sequence[torch.Tensor]) -> object:
        return self.transform.init(weights)

    def propose(self, weights: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], state: object
                ) -> tuple[Proposal, object]:
        return self.transform.propose(Proposal(), grads, state, weights=weights)

    def without_teleport(self) -> Composed:
        """The same learned update with the teleport switched off (an ablation; shares the nets)."""
        if self.update is None:
            raise ValueError(f"{self.name} has no learned update to keep")
        return Composed(f"{self.name} (teleport off)", self.parts[0])
