"""Persistent evolution strategies (PES; Vicol, Metz & Sohl-Dickstein, ICML 2021): an unbiased estimate of the
meta-gradient of a whole trajectory's meta-loss from truncated windows, without a meta-backward.

`particles` copies of the B inner trajectories run side by side, each under the meta-parameters θ + ε_i, in
antithetic pairs (ε, −ε). Every window draws fresh perturbations, adds them to each particle's running sum ξ_i (the
"persistent" part, which removes truncation bias), runs the window under no gradient, and estimates

    ĝ = Σ_i ξ_i (L_i − mean L) / (particles · σ²),

where L_i is particle i's window meta-loss (`metatele.outer.trainer.meta_loss`). The estimate goes through the same
clip and outer optimizer as truncated BPTT (`trainer.train_batch`), whose signature `pes_batch` shares; it is chosen by
`TrainerSettings.estimator`. Each window costs `particles` gradient-free windows instead of one window and its
meta-backward. The perturbations are deterministic in the settings' seed and the batch's first task seed.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from metatele.methods.base import set_horizon
from metatele.outer.distributed import SOLO, Reducer
from metatele.outer.settings import TrainerSettings
from metatele.outer import trainer
from metatele.outer.trainer import Learnable, meta_loss, meta_update, unroll_window
from metatele.tasks.base import TaskBatch

__all__ = ["pes_batch", "batch_step"]


def _set(params: Sequence[torch.Tensor], flat: torch.Tensor) -> None:
    """Write the flat vector (P,) into the parameters, in order."""
    with torch.no_grad():
        for p, part in zip(params, flat.split([p.numel() for p in params])):
            p.copy_(part.view_as(p))


def pes_batch(method: Learnable, opt: torch.optim.Optimizer, task: TaskBatch, settings: TrainerSettings,
              steps: int | None = None, reducer: Reducer = SOLO,
              on_window: Callable[[], None] | None = None) -> dict[str, float]:
    """Meta-train on one batch of trajectories by PES, one meta-update per window of settings.unroll steps; returns
    the same statistics as `train_batch` (meta_loss: the particles' mean window meta-loss)."""
    params = list(method.parameters())
    steps = steps or settings.steps
    set_horizon(method, steps)
    n, sigma = settings.particles, settings.sigma
    dtype, device = params[0].dtype, params[0].device
    theta = torch.cat([p.detach().reshape(-1) for p in params])
    gen = torch.Generator().manual_seed(settings.seed * 1_000_003 + int(task.seeds[0]))
    w0 = task.init_weights()
    cap = alive0 = None
    if settings.loss_cap:
        cap = settings.loss_cap * task.loss(w0, task.data(0)).detach()
        alive0 = torch.isfinite(cap)
    runs: list[tuple[list[torch.Tensor], Any, torch.Tensor | None]] = [(list(w0), method.init_state(w0), alive0)
                                                                        for _ in range(n)]
    xi = torch.zeros(n, theta.numel(), dtype=dtype, device=device)
    stats: dict[str, list[float]] = {"meta_loss": [], "grad_norm": []}
    skipped = 0
    try:
        for start in range(0, steps, settings.unroll):
            half = torch.randn(n // 2, theta.numel(), generator=gen, dtype=torch.float64).to(device, dtype) * sigma
            eps = torch.cat([half, -half])
            xi += eps
            L = torch.empty(n, dtype=torch.float64)
            for i in range(n):
                _set(params, theta + eps[i])
                weights, state, alive = runs[i]
                with torch.no_grad():
                    win = unroll_window(method, task, weights, state, start, settings.unroll, False, alive, cap)
                    L[i] = meta_loss(win.losses, settings.meta_loss, settings.loss_growth).double()
                runs[i] = (win.weights, win.state, win.alive)
            _set(params, theta)

            def estimate() -> None:
                g = ((L - L.mean()).to(device, dtype)[:, None] * xi).sum(0) / (n * sigma ** 2)
                for p, part in zip(params, g.split([p.numel() for p in params])):
                    p.grad = part.view_as(p).clone()

            gn = meta_update(params, opt, bool(torch.isfinite(L).all()), estimate, reducer, len(task.seeds),
                             settings.clip)
            if math.isnan(gn):  # divergence: no update from this window, abandon the batch
                skipped += 1
                break
            theta = torch.cat([p.detach().reshape(-1) for p in params])
            stats["meta_loss"].append(float(L.mean()))
            stats["grad_norm"].append(gn)
            if on_window is not None:
                on_window()
    finally:
        _set(params, theta)  # never leave a perturbation behind
    out = {k: sum(v) / len(v) for k, v in stats.items() if v}
    out["skipped"] = float(skipped)
    alive = [a for _, _, a in runs if a is not None]
    if alive:
        out["frozen"] = float(sum(int((~a).sum()) for a in alive)) / len(alive)
    out["windows"] = float(len(stats["meta_loss"]))
    return out


def batch_step(settings: TrainerSettings) -> Callable[..., dict[str, float]]:
    """The batch function of the settings' estimator: `trainer.train_batch` (truncated BPTT, looked up when asked) or
    `pes_batch`."""
    return pes_batch if settings.estimator == "pes" else trainer.train_batch
