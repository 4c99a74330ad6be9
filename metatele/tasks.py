"""The task family: bias-free LeakyReLU MLP regression, batched over tasks.

A task is (X, Y, W_1..W_L) with every entry drawn i.i.d. U[0, 1) from one integer seed.
Shapes carry a leading task dimension B: X (B, d0, n), Y (B, dL, n), W_m (B, d_m, d_{m-1}).
The paper's setting is widths (20, 20, 20), n = 20.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

SLOPE = 0.1  # LeakyReLU negative slope; the inverse activation has slope 1/SLOPE.
PAPER_WIDTHS = (20, 20, 20)
PAPER_N = 20


def act(z: torch.Tensor) -> torch.Tensor:
    """σ = LeakyReLU(0.1)."""
    return F.leaky_relu(z, SLOPE)


def act_inv(a: torch.Tensor) -> torch.Tensor:
    """σ⁻¹ = LeakyReLU(10)."""
    return F.leaky_relu(a, 1.0 / SLOPE)


@dataclass
class TaskBatch:
    """B regression tasks. X (B, d0, n), Y (B, dL, n), weights[m] (B, d_{m+1}, d_m)."""

    X: torch.Tensor
    Y: torch.Tensor
    weights: list[torch.Tensor]
    seeds: list[int]

    @property
    def widths(self) -> tuple[int, ...]:
        return (self.X.shape[1], *(w.shape[1] for w in self.weights))

    def to(self, device: torch.device | str) -> TaskBatch:
        return TaskBatch(self.X.to(device), self.Y.to(device), [w.to(device) for w in self.weights], self.seeds)


def sample(
    seeds: Sequence[int] | int,
    widths: Sequence[int] = PAPER_WIDTHS,
    n: int = PAPER_N,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> TaskBatch:
    """Sample one task per seed, deterministically. Entries are drawn in float64 and then cast,
    so a float32 batch is the rounded float64 batch of the same seeds."""
    seeds = [seeds] if isinstance(seeds, int) else list(seeds)
    widths = tuple(int(d) for d in widths)
    if len(widths) < 3:
        raise ValueError(f"widths needs an input, at least one hidden and an output width, got {widths}")
    if n < 1 or min(widths) < 1:
        raise ValueError(f"widths and n must be positive, got widths={widths}, n={n}")
    xs, ys, ws = [], [], [[] for _ in widths[1:]]
    for s in seeds:
        gen = torch.Generator().manual_seed(int(s))
        for m, (d_in, d_out) in enumerate(zip(widths[:-1], widths[1:])):
            ws[m].append(torch.rand(d_out, d_in, generator=gen, dtype=torch.float64))
        xs.append(torch.rand(widths[0], n, generator=gen, dtype=torch.float64))
        ys.append(torch.rand(widths[-1], n, generator=gen, dtype=torch.float64))
    cast = lambda t: torch.stack(t).to(dtype=dtype, device=device)  # noqa: E731
    return TaskBatch(cast(xs), cast(ys), [cast(w) for w in ws], seeds)


def hidden(weights: Sequence[torch.Tensor], X: torch.Tensor) -> list[torch.Tensor]:
    """Post-activation hidden layers [h_1, ..., h_{L-1}], each (B, d_m, n)."""
    hs, h = [], X
    for W in weights[:-1]:
        h = act(torch.bmm(W, h))
        hs.append(h)
    return hs


def forward(weights: Sequence[torch.Tensor], X: torch.Tensor) -> torch.Tensor:
    """Network output W_L h_{L-1}, shape (B, dL, n)."""
    h = X
    for W in weights[:-1]:
        h = act(torch.bmm(W, h))
    return torch.bmm(weights[-1], h)


def loss(weights: Sequence[torch.Tensor], X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """½‖Y − f(X)‖_F² per task (a sum over entries), shape (B,)."""
    return 0.5 * (Y - forward(weights, X)).pow(2).sum(dim=(1, 2))


def loss_and_grad(
    weights: Sequence[torch.Tensor], X: torch.Tensor, Y: torch.Tensor,
    create_graph: bool = False, retain_graph: bool = False,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Per-task loss (B,) and its gradients, one (B, d_out, d_in) tensor per weight.

    Tasks are independent, so the gradient of the summed loss is each task's own gradient.
    create_graph: the gradients are differentiable; retain_graph: the loss stays differentiable.
    """
    with torch.enable_grad():
        ws = [w if w.requires_grad else w.detach().requires_grad_() for w in weights]
        L = loss(ws, X, Y)
        grads = torch.autograd.grad(L.sum(), ws, create_graph=create_graph, retain_graph=retain_graph or create_graph)
    return L, list(grads)


# Seed ranges. Meta-training draws only from TRAIN_SEEDS; evaluation defaults to EVAL_FIRST_SEED and
# baseline tuning / held-out logging use VALID_FIRST_SEED, so no evaluated task was trained on.
TRAIN_SEEDS = range(10**9)
EVAL_FIRST_SEED = 10**9
VALID_FIRST_SEED = 3 * 10**9
TRAIN_STRIDE = 10**7  # config seed s uses training seeds s·TRAIN_STRIDE + i


def train_seeds(seed: int, start: int, count: int) -> list[int]:
    """Training task seeds for trajectories start..start+count−1 of a run with config seed `seed`."""
    first = seed * TRAIN_STRIDE + start
    if seed < 0 or start + count > TRAIN_STRIDE or first + count > TRAIN_SEEDS.stop:
        raise ValueError(f"seed must be in [0, {TRAIN_SEEDS.stop // TRAIN_STRIDE}) and trajectories ≤ {TRAIN_STRIDE}")
    return list(range(first, first + count))


def overlaps_training(first_seed: int, count: int) -> bool:
    return first_seed < TRAIN_SEEDS.stop and first_seed + count > TRAIN_SEEDS.start
