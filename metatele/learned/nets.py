"""The networks inside the learned methods: batched stacked LSTMs that read gradients.

- m1 `UpdateNet` (LSTM(update)): flattened gradients of all layers (B, P) → the local update (B, P), either
  directly (the paper) or as a residual on a GD step, u = a·g + b·rms(g)·tanh(head(h)), with a learned GD
  step a, a learned scale b and a zero-initialized head, so that an untrained m1 is exactly GD and the learned
  part is bounded relative to the gradient (‖learned part‖ ≤ b‖g‖) and vanishes with it; or as learned
  per-coordinate gains on a GD step, u = a·g ⊙ GAIN_MAX^tanh(head(h)) (a learned diagonal preconditioner that
  keeps the sign of every coordinate of the gradient).
- m2 `TeleNet` (LSTM(tele)) for one hidden layer of width k: [vec ∇W_m, vec ∇W_{m+1}] → T (B, k, k),
  an optional gate logit and an optional step-size logit (LSTM(lr,tele)).
Both may also read `n_extra` features per task after the gradients (the progress features `progress_features`).
Every tensor has a leading trajectory dimension B.
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["PREPROCESSING", "UPDATE_FORMS", "GAIN_MAX", "LR_RANGE", "LR_INIT", "TINY", "PROGRESS_CENTRES", "sqrt0", "rms",
           "gains", "preprocess", "progress_features", "LSTMState", "StackedLSTM", "scaled_linear", "UpdateNet",
           "TeleNet", "learned_lr"]

PREPROCESSING = ("logsign", "raw", "rms")
UPDATE_FORMS = ("direct", "residual", "gain")
GAIN_MAX = 10.0  # "gain" form: per-coordinate step sizes within [lr/GAIN_MAX, lr·GAIN_MAX]
LR_RANGE = (1e-7, 5e-3)
LR_INIT = 1e-4  # the step size an untrained step-size head starts from
LOGSIGN_P = 10.0
TINY = 1e-30  # the floor of `rms`: far below any gradient that matters, far above float32's smallest normal
PROGRESS_CENTRES = (0.03, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 1.0, 1.1)  # VeLO's (learned_optimization hyper_v2)


def sqrt0(x: torch.Tensor) -> torch.Tensor:
    """√x (x ≥ 0) whose derivative at 0 is taken as 0, not ∞: the plain 1/(2√x) makes ∞·0 = NaN meta-gradients
    where a gradient is exactly zero (higher #125, torchopt #26). Its value is √x exactly, subnormal x aside."""
    return torch.where(x > 0, x.clamp_min(torch.finfo(x.dtype).tiny).sqrt(), torch.zeros_like(x))


def rms(x: torch.Tensor) -> torch.Tensor:
    """Root mean square over all but the task dimension, (B, ...) → (B,) (of a (B,) tensor: |x|), bounded below
    by TINY."""
    return sqrt0(x.pow(2).reshape(x.shape[0], -1).mean(1)).clamp_min(TINY)


def gains(o: torch.Tensor) -> torch.Tensor:
    """Per-coordinate gains GAIN_MAX^tanh(o), within [1/GAIN_MAX, GAIN_MAX] (1 where o = 0); o any shape."""
    return torch.exp(math.log(GAIN_MAX) * torch.tanh(o))


def preprocess(g: torch.Tensor, kind: str) -> torch.Tensor:
    """(B, P) gradients → LSTM input. 'raw': as is (the paper). 'logsign': Andrychowicz et al. (2016),
    each coordinate → (log|g|/p, sign g) if |g| ≥ e^-p else (−1, e^p g), with p = 10; (B, 2P).
    'rms': scale-free, g/rms(g) plus one feature log10(rms(g))/5 clipped to [−2, 2]; (B, P + 1)."""
    if kind == "raw":
        return g
    if kind == "rms":
        r = rms(g)[:, None]
        return torch.cat([g / r, (r.log10() / 5).clamp(-2.0, 2.0)], dim=-1)
    big = g.abs() >= math.exp(-LOGSIGN_P)
    first = torch.where(big, g.abs().clamp_min(math.exp(-LOGSIGN_P)).log() / LOGSIGN_P, -torch.ones_like(g))
    second = torch.where(big, torch.sign(g), math.exp(LOGSIGN_P) * g)
    return torch.cat([first, second], dim=-1)


def progress_features(t: torch.Tensor, horizon: float) -> torch.Tensor:
    """(B,) steps taken → (B, len(PROGRESS_CENTRES)): VeLO's training-progress features tanh(10(t/T − c)) for a
    run of T = `horizon` steps."""
    c = torch.tensor(PROGRESS_CENTRES, dtype=t.dtype, device=t.device)
    return torch.tanh(10 * (t[:, None] / horizon - c))


def input_size(n_grads: int, kind: str) -> int:
    return {"logsign": 2 * n_grads, "rms": n_grads + 1}.get(kind, n_grads)


def _inputs(g: torch.Tensor, kind: str, extra: torch.Tensor | None) -> torch.Tensor:
    """An LSTM's input: the preprocessed gradients (B, P) → (B, input_size), then the extra features (B, E)."""
    x = preprocess(g, kind)
    return x if extra is None else torch.cat([x, extra.to(x.dtype)], dim=1)


LSTMState = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


class StackedLSTM(nn.Module):
    """Two stacked LSTMCells; state = (h1, c1, h2, c2), each (B, size)."""

    def __init__(self, n_in: int, size: int) -> None:
        super().__init__()
        self.size = size
        self.cell1 = nn.LSTMCell(n_in, size)
        self.cell2 = nn.LSTMCell(size, size)

    def init_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> LSTMState:
        z = torch.zeros(batch, self.size, device=device, dtype=dtype)
        return (z, z, z, z)

    def forward(self, x: torch.Tensor, state: LSTMState) -> tuple[torch.Tensor, LSTMState]:
        h1, c1 = self.cell1(x, (state[0], state[1]))
        h2, c2 = self.cell2(h1, (state[2], state[3]))
        return h2, (h1, c1, h2, c2)


def scaled_linear(n_in: int, n_out: int, scale: float = 0.01) -> nn.Linear:
    """A linear layer with zero bias and its default init scaled by `scale` (small: starts near neutral)."""
    head = nn.Linear(n_in, n_out)
    with torch.no_grad():
        head.weight.mul_(scale)
        head.bias.zero_()
    return head


class UpdateNet(nn.Module):
    """m1: (B, P) gradients → (B, P) update. form "direct": u = out_scale · head(LSTM(pre(g)));
    form "residual": u = e^{log_lr}·g + e^{log_scale}·rms(g)·tanh(head(LSTM(pre(g)))), head initialized at zero
    and log_lr = log_scale = log(nominal_lr) at initialization; form "gain": u = e^{log_lr}·g ⊙
    GAIN_MAX^tanh(head(LSTM(pre(g)))), head initialized at zero.
    With n_extra features (progress), the LSTM also reads them, and a zero-initialized linear `schedule` of them
    adds s (B,) to the log step size (e^{log_lr + s}, e^{log_scale + s}, or out_scale·e^s): a learned step-size
    schedule over the run, which the LSTM's many gradient inputs would otherwise drown."""

    def __init__(self, n_params: int, size: int, preprocessing: str, out_scale: float, form: str = "direct",
                 nominal_lr: float = 3e-4, n_extra: int = 0) -> None:
        super().__init__()
        self.preprocessing, self.out_scale, self.form = preprocessing, out_scale, form
        self.lstm = StackedLSTM(input_size(n_params, preprocessing) + n_extra, size)
        self.head = scaled_linear(size, n_params, scale=1.0 if form == "direct" else 0.0)
        self.schedule = scaled_linear(n_extra, 1, scale=0.0) if n_extra else None
        if form != "direct":
            self.log_lr = nn.Parameter(torch.tensor(math.log(nominal_lr)))
        if form == "residual":
            self.log_scale = nn.Parameter(torch.tensor(math.log(nominal_lr)))

    def forward(self, g: torch.Tensor, state: LSTMState, extra: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, LSTMState]:
        h, state = self.lstm(_inputs(g, self.preprocessing, extra), state)
        if self.schedule is None or extra is None:
            s = torch.zeros((), dtype=g.dtype, device=g.device)
        else:
            s = self.schedule(extra.to(g.dtype))  # (B, 1)
        if self.form == "residual":
            return ((self.log_lr + s).exp() * g + (self.log_scale + s).exp() * rms(g)[:, None] * torch.tanh(self.head(h)),
                    state)
        if self.form == "gain":
            return (self.log_lr + s).exp() * g * gains(self.head(h)), state
        return self.out_scale * s.exp() * self.head(h), state


class TeleNet(nn.Module):
    """m2 for one hidden layer of width k: (B, P_pair) gradients → T (B, k, k), an optional gate
    in (0, 1) per task (B,), starting near sigmoid(gate_bias), and an optional step-size logit (B,).
    With n_extra features (progress), the LSTM also reads them, and a zero-initialized linear `schedule` of them
    shifts the gate's and the step size's logits (a learned teleport and step-size schedule over the run)."""

    def __init__(self, n_in: int, k: int, size: int, preprocessing: str, gate: bool, step_size: bool,
                 gate_bias: float = 2.0, n_extra: int = 0) -> None:
        super().__init__()
        self.k, self.preprocessing, self.gate_bias = k, preprocessing, gate_bias
        self.lstm = StackedLSTM(input_size(n_in, preprocessing) + n_extra, size)
        self.head = nn.Linear(size, k * k)
        self.gate = scaled_linear(size, 1) if gate else None
        self.lr = scaled_linear(size, 1) if step_size else None
        heads = int(gate) + int(step_size)
        self.schedule = scaled_linear(n_extra, heads, scale=0.0) if n_extra and heads else None

    def forward(self, g: torch.Tensor, state: LSTMState, extra: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, LSTMState]:
        h, state = self.lstm(_inputs(g, self.preprocessing, extra), state)
        T = self.head(h).view(-1, self.k, self.k)
        shift = (self.schedule(extra.to(h.dtype)) if self.schedule is not None and extra is not None
                 else h.new_zeros(h.shape[0], 2))
        gate = torch.sigmoid(self.gate(h)[:, 0] + self.gate_bias + shift[:, 0]) if self.gate is not None else None
        lr = self.lr(h)[:, 0] + shift[:, -1] if self.lr is not None else None
        return T, gate, lr, state


def learned_lr(logit: torch.Tensor) -> torch.Tensor:
    """Map a logit to a step size in LR_RANGE, log-uniformly and smoothly (a clamp that keeps
    gradients); logit 0 gives LR_INIT."""
    lo, hi = math.log(LR_RANGE[0]), math.log(LR_RANGE[1])
    frac = (math.log(LR_INIT) - lo) / (hi - lo)
    return torch.exp(lo + (hi - lo) * torch.sigmoid(logit + math.log(frac / (1 - frac))))
