"""Learned meta-optimizers: batched stacked-LSTM networks that read gradients.

- m1 `UpdateNet` (LSTM(update)): flattened gradients of all layers → the local update u, W ← W − u.
- m2 `TeleNet` (LSTM(tele)), one per hidden layer m: [vec ∇W_m, vec ∇W_{m+1}] → T_m (k×k), the
  Lie-algebra element of g = I + T, normalized to magnitude eps (optionally × a learned gate).
  With `lr_head` it also gives the GD step size (the LSTM(lr,tele) baseline).

`MetaOptimizer` bundles them by method name and implements the `Method` protocol of
`metatele.step`. Every tensor has a leading trajectory dimension B.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from metatele.step import Proposal

METHODS = ("lstm-update", "lstm-update-tele", "lstm-lr-tele")
PREPROCESS = ("logsign", "raw")
LR_RANGE = (1e-7, 5e-3)
LR_INIT = 1e-4  # the step size an untrained lr head starts from
LOGSIGN_P = 10.0


def preprocess(g: torch.Tensor, kind: str) -> torch.Tensor:
    """(B, P) gradients → LSTM input. 'raw': as is (the paper). 'logsign': Andrychowicz et al. (2016),
    each coordinate → (log|g|/p, sign g) if |g| ≥ e^-p else (−1, e^p g), with p = 10; (B, 2P)."""
    if kind == "raw":
        return g
    big = g.abs() >= math.exp(-LOGSIGN_P)
    first = torch.where(big, g.abs().clamp_min(math.exp(-LOGSIGN_P)).log() / LOGSIGN_P, -torch.ones_like(g))
    second = torch.where(big, torch.sign(g), math.exp(LOGSIGN_P) * g)
    return torch.cat([first, second], dim=-1)


def input_size(n_grads: int, kind: str) -> int:
    return 2 * n_grads if kind == "logsign" else n_grads


LSTMState = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


class StackedLSTM(nn.Module):
    """Two stacked LSTMCells; state = (h1, c1, h2, c2), each (B, hidden)."""

    def __init__(self, n_in: int, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.cell1 = nn.LSTMCell(n_in, hidden)
        self.cell2 = nn.LSTMCell(hidden, hidden)

    def init_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> LSTMState:
        z = torch.zeros(batch, self.hidden, device=device, dtype=dtype)
        return (z, z, z, z)

    def forward(self, x: torch.Tensor, state: LSTMState) -> tuple[torch.Tensor, LSTMState]:
        h1, c1 = self.cell1(x, (state[0], state[1]))
        h2, c2 = self.cell2(h1, (state[2], state[3]))
        return h2, (h1, c1, h2, c2)


def _head(n_in: int, n_out: int, scale: float = 0.01) -> nn.Linear:
    """A linear head with zero bias and its default init scaled by `scale` (small: starts near neutral)."""
    head = nn.Linear(n_in, n_out)
    with torch.no_grad():
        head.weight.mul_(scale)
        head.bias.zero_()
    return head


class UpdateNet(nn.Module):
    """m1: (B, P) gradients → (B, P) update u = out_scale · head(LSTM(pre(g)))."""

    def __init__(self, n_params: int, hidden: int, preprocessing: str, out_scale: float) -> None:
        super().__init__()
        self.preprocessing, self.out_scale = preprocessing, out_scale
        self.lstm = StackedLSTM(input_size(n_params, preprocessing), hidden)
        self.head = _head(hidden, n_params, scale=1.0)

    def forward(self, g: torch.Tensor, state: LSTMState) -> tuple[torch.Tensor, LSTMState]:
        h, state = self.lstm(preprocess(g, self.preprocessing), state)
        return self.out_scale * self.head(h), state


class TeleNet(nn.Module):
    """m2 for one hidden layer of width k: (B, P_pair) gradients → T (B, k, k), an optional gate
    logit (B,) and an optional log-step-size logit (B,)."""

    def __init__(self, n_in: int, k: int, hidden: int, preprocessing: str, gate: bool, lr_head: bool) -> None:
        super().__init__()
        self.k, self.preprocessing = k, preprocessing
        self.lstm = StackedLSTM(input_size(n_in, preprocessing), hidden)
        self.head = nn.Linear(hidden, k * k)
        self.gate = _head(hidden, 1) if gate else None
        self.lr = _head(hidden, 1) if lr_head else None

    def forward(self, g: torch.Tensor, state: LSTMState
                ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, LSTMState]:
        h, state = self.lstm(preprocess(g, self.preprocessing), state)
        T = self.head(h).view(-1, self.k, self.k)
        gate = torch.sigmoid(self.gate(h)[:, 0] + 2.0) if self.gate is not None else None
        lr = self.lr(h)[:, 0] if self.lr is not None else None
        return T, gate, lr, state


def learned_lr(logit: torch.Tensor) -> torch.Tensor:
    """Map a logit to a step size in LR_RANGE, log-uniformly and smoothly (a clamp that keeps
    gradients); logit 0 gives LR_INIT."""
    lo, hi = math.log(LR_RANGE[0]), math.log(LR_RANGE[1])
    frac = (math.log(LR_INIT) - lo) / (hi - lo)
    return torch.exp(lo + (hi - lo) * torch.sigmoid(logit + math.log(frac / (1 - frac))))


@dataclass(frozen=True)
class MetaOptSpec:
    """Everything needed to rebuild a MetaOptimizer (stored in checkpoint metadata)."""

    method: str
    widths: tuple[int, ...]
    hidden: int
    preprocessing: str = "raw"
    eps: float = 0.01
    exact: bool = True
    gate: bool = False
    out_scale: float = 0.1

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.preprocessing not in PREPROCESS:
            raise ValueError(f"unknown preprocessing {self.preprocessing!r}; choose one of {', '.join(PREPROCESS)}")


class MetaOptimizer(nn.Module):
    """A learned method by name: 'lstm-update' (m1), 'lstm-update-tele' (m1 + m2 per hidden layer),
    'lstm-lr-tele' (m2 with a step-size head, plain GD step)."""

    def __init__(self, spec: MetaOptSpec) -> None:
        super().__init__()
        self.spec = spec
        w = spec.widths
        shapes = list(zip(w[1:], w[:-1]))
        self.sizes = [a * b for a, b in shapes]
        self.update = None
        if spec.method in ("lstm-update", "lstm-update-tele"):
            self.update = UpdateNet(sum(self.sizes), spec.hidden, spec.preprocessing, spec.out_scale)
        self.tele = nn.ModuleList()
        if spec.method in ("lstm-update-tele", "lstm-lr-tele"):
            lr_head = spec.method == "lstm-lr-tele"
            for m in range(len(w) - 2):
                self.tele.append(TeleNet(self.sizes[m] + self.sizes[m + 1], w[m + 1], spec.hidden,
                                         spec.preprocessing, spec.gate, lr_head))

    @property
    def name(self) -> str:
        return self.spec.method

    def init_state(self, weights: Sequence[torch.Tensor]) -> list[LSTMState]:
        B, dev, dt = weights[0].shape[0], weights[0].device, weights[0].dtype
        nets = ([self.update.lstm] if self.update is not None else []) + [t.lstm for t in self.tele]
        return [net.init_state(B, dev, dt) for net in nets]

    def propose(self, weights: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], state: list[LSTMState]
                ) -> tuple[Proposal, list[LSTMState]]:
        B = grads[0].shape[0]
        flat = [g.reshape(B, -1) for g in grads]
        new_state: list[LSTMState] = []
        if self.update is not None:
            u, s = self.update(torch.cat(flat, dim=1), state[0])
            new_state.append(s)
            update = [c.view_as(g) for c, g in zip(u.split(self.sizes, dim=1), grads)]
        else:
            update = None
        T, eps, lrs = [], [], []
        for m, net in enumerate(self.tele):
            t, gate, lr, s = net(torch.cat([flat[m], flat[m + 1]], dim=1), state[len(new_state)])
            new_state.append(s)
            T.append(t)
            eps.append(self.spec.eps if gate is None else self.spec.eps * gate)
            if lr is not None:
                lrs.append(lr)
        if lrs:  # LSTM(lr,tele): plain GD with the learned step size (averaged over hidden layers' heads)
            lr = learned_lr(torch.stack(lrs).mean(0))
            update = [lr[:, None, None] * g for g in grads]
        return Proposal(update=update, T=T or None, eps=eps or None, exact=self.spec.exact, lr=lr if lrs else None), new_state
