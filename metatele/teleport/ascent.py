"""Teleportation by gradient steps on the group element. `gradient_ascent_teleport` is the paper's non-learned
teleport: move along the level set to a steeper point by ascending ‖∇L(g·W)‖² over the Lie-algebra element T of
g = I + T, on a task's teleport data (`metatele.tasks.TaskBatch.teleport_data`). `ascend` raises or lowers any
objective of the transformed weights, over GL (g = I + T, exact on a batch X) or positive rescaling (exact on all
data); `ascend_group` returns the group element it reached (`metatele.teleport.sequential` scales it back when a
teleport breaks its loss tolerance). Shapes as in `metatele.teleport.action`."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch

from metatele.errors import ConfigError
from metatele.tasks.base import has_bias
from metatele.teleport.action import grad_norm_sq, layer_pinv, normalize, pinv_full_rank, rescale, teleport, with_ones

if TYPE_CHECKING:
    from metatele.tasks.base import TaskBatch, TeleportData
    from metatele.tasks.mlp import LeakyReLU

__all__ = ["steepest_direction", "rescale_direction", "gradient_ascent_teleport", "ascend", "ascend_group",
           "DEFAULT_STEP"]

DEFAULT_STEP = 0.03  # normalized ascent step: ‖ΔT‖_F per ascent step and layer


def rescale_direction(grads: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The steepest-ascent direction of ‖∇L‖² in the positive diagonal subgroup (`action.rescale`), from the
    gradient alone: one (B, k_m) per hidden layer m, of unit norm per task (zero where the derivative is zero).

    The loss is invariant under W_m → diag(e^s) W_m, W_{m+1} → W_{m+1} diag(e^-s) for any data, so the gradient
    transforms exactly (rows of ∇W_m by e^-s, columns of ∇W_{m+1} by e^s) and ∂‖∇L‖²/∂s_j at s = 0 is
    2(‖∇W_{m+1}[:, j]‖² − ‖∇W_m[j, :]‖²): no second derivative is needed. Augmented grads [∇W ∇b] (B, d_out,
    d_in + 1) count the bias with its row; the next layer's bias column is not rescaled."""
    out = []
    for g, nxt in zip(grads[:-1], grads[1:]):
        k = g.shape[1]
        d = nxt[..., :k].pow(2).sum(1) - g.pow(2).sum(-1)
        norm = d.pow(2).sum(-1, keepdim=True).sqrt()
        out.append(torch.where(norm > 0, d / norm.clamp_min(torch.finfo(d.dtype).tiny), torch.zeros_like(d)))
    return out


def steepest_direction(weights: Sequence[torch.Tensor], task: TaskBatch, data: TeleportData, *,
                       X_pinv: torch.Tensor | None = None, skip_invalid: bool = False,
                       differentiable: bool = False) -> list[torch.Tensor]:
    """G_m = ∂‖∇L(g·W)‖²/∂T_m at g = I + T, T = 0, under the exact action (`action.teleport`, minimum-norm
    formula) on data.batch.X: the steepest-ascent direction of the squared gradient norm in the Lie algebra, one
    (B, k_m, k_m) per hidden layer. In closed form: ∇_W‖∇L‖² at g·W (one double backward through the loss,
    none through the action) pulled back through the action's derivative at g = I (see `_pull_back`).
    weights[m] (B, d_{m+1}, d_m), or augmented [W b] (B, d_{m+1}, d_m + 1) for a task with biases
    (`metatele.tasks.base.has_bias`). X_pinv: the cached pseudo-inverse of the first layer's input (default
    data.X_pinv). Detached from the weights unless `differentiable` (then G is a differentiable function of them,
    for exact meta-gradients). skip_invalid: tasks where the exact action is impossible get G = 0 instead of an error."""
    W = list(weights) if differentiable else [w.detach() for w in weights]
    X = data.batch.X
    X_pinv = X_pinv if X_pinv is not None else data.X_pinv
    act, bias = task.activation, has_bias(task)
    with torch.enable_grad():
        # The action at g = I, pair by pair as in `action.teleport`: it keeps every activation a_m and maps each
        # hidden layer's weights to z_m h̃⁺ (z_m = σ⁻¹(a_m), h̃ its input), their projection onto h̃'s row space.
        ok = torch.ones(X.shape[0], dtype=torch.bool, device=X.device)
        Qs, hps, acts, Wg = [], [], [], []
        h = X
        for m in range(len(W) - 1):
            hin = with_ones(h) if bias else h
            Q, hp, ok = layer_pinv(hin, X_pinv if m == 0 else None, ok, skip_invalid=skip_invalid)
            a = act(torch.bmm(W[m], hin))
            z = act.inverse(a)
            Wm = torch.bmm(z, hp)
            Wg.append(Wm + torch.bmm(z - torch.bmm(Wm, hin), hp))  # with the action's refinement step
            Qs.append(Q)
            hps.append(hp)
            acts.append(a)
            h = a
        Wg.append(W[-1])
        keep = ok[:, None, None]
        if skip_invalid:
            Wg = [torch.where(keep, a, b) for a, b in zip(Wg, W)]
        at = [w if w.requires_grad else w.detach().requires_grad_() for w in Wg]
        _, grads = task.loss_and_grad(at, data.batch, create_graph=True)
        V = torch.autograd.grad(grad_norm_sq(grads).sum(), at, create_graph=differentiable)
        G = _pull_back(list(V), Wg, Qs, hps, acts, act)
    if skip_invalid:
        G = [torch.where(keep, g, torch.zeros_like(g)).nan_to_num() for g in G]
    return G


def _pull_back(V: list[torch.Tensor], Wg: list[torch.Tensor], Qs: list[torch.Tensor | None], hps: list[torch.Tensor],
               acts: list[torch.Tensor], act: LeakyReLU) -> list[torch.Tensor]:
    """[⟨V, ∂(g·W)/∂T_m⟩ at g = I for each hidden layer m]: the action's derivative, transposed. V[m] = ∂f/∂(g·W)_m
    and Wg[m] = (g·W)_m at g = I, (B, d_{m+1}, d_m (+1)). Per hidden layer m, of input h̃_{m-1} (B, d_m (+1), n):
    hps[m] = h̃_{m-1}⁺, Qs[m] the orthonormal basis of h̃_{m-1}'s columns (used for m ≥ 1), acts[m] = a_m (B, k_m, n).

    For h̃ of full column rank the action with g_m = I + T_m is (g·W)_m = σ⁻¹(g_m a_m) pinv(h̃'_{m-1}) with
    h̃'_m = [g_m a_m; 1], and W_L's first k columns go to W_L g⁻¹. With dpinv(h) = −h⁺ dh h⁺ + (hᵀh)⁻¹dhᵀ(I − hh⁺):
        ∂/∂T_m = (σ⁻¹'(a_m) ⊙ V_m h̃_{m-1}⁺ᵀ) a_mᵀ + [Mᵀ P − P (M + Mᵀ) P]_{:k,:k},   M = (g·W)_{m+1}ᵀ V_{m+1},
    the first term from layer m's own σ⁻¹(g_m a_m), the second from layer m+1's pinv(h̃'_m), P = QQᵀ = h̃_m h̃_m⁺
    (the projector onto h̃_m's columns; P = I for the last layer, where the term is −M_{:k,:k}). No QR, solve or
    pseudo-inverse is differentiated, (hᵀh)⁻¹ (cond²) is never formed, and P from Q (not h̃h̃⁺) keeps the error
    at autograd's level when h̃ is ill-conditioned."""
    G = []
    for m, (a, hp) in enumerate(zip(acts, hps)):
        k = a.shape[1]
        Vh = torch.bmm(V[m], hp.mT)
        Gm = torch.bmm(torch.where(a > 0, Vh, Vh * (1.0 / act.slope)), a.mT)
        M = torch.bmm(Wg[m + 1].mT, V[m + 1])
        if m + 1 < len(acts):
            P = torch.bmm(Qs[m + 1], Qs[m + 1].mT)
            Gm = Gm + (torch.bmm(M.mT, P) - torch.bmm(P, torch.bmm(M + M.mT, P)))[:, :k, :k]
        else:
            Gm = Gm - M[:, :k, :k]
        G.append(Gm)
    return G


def gradient_ascent_teleport(
    weights: Sequence[torch.Tensor],
    task: TaskBatch,
    data: TeleportData,
    steps: int = 10,
    lr: float | None = None,
    least_squares: bool = False,
    skip_invalid: bool = False,
    nearest: bool = False,
) -> list[torch.Tensor]:
    """Teleport towards a steeper point of the level set of `task`'s loss on `data`: `ascend` on ‖∇L(g·W)‖².

    Starts from T = 0 and takes `steps` ascent steps, then applies the exact action once. lr=None (default rule):
    normalized steps, T ← T + 0.03·G/‖G‖_F per layer and task, where G = ∂‖∇L‖²/∂T. This is scale-free (the raw G
    spans many orders of magnitude across tasks) and moves g at most 0.03·steps from I in Frobenius norm. A float
    lr takes plain steps T ← T + lr·G. The result is detached from the input weights' graph. skip_invalid: tasks
    where the exact action is impossible (a non-finite or rank-deficient layer input) keep their weights instead
    of failing the batch; nearest: as in `metatele.teleport.action`.
    """
    def steepness(W: list[torch.Tensor]) -> torch.Tensor:
        return grad_norm_sq(task.loss_and_grad(W, data.batch, create_graph=True)[1])

    return ascend(weights, data.batch.X, steepness, act=task.activation, steps=steps, lr=lr, bias=has_bias(task),
                  least_squares=least_squares, X_pinv=data.X_pinv, skip_invalid=skip_invalid, nearest=nearest)


def ascend_group(
    weights: Sequence[torch.Tensor],
    X: torch.Tensor,
    objective: Callable[[list[torch.Tensor]], torch.Tensor],
    *,
    act: LeakyReLU,
    steps: int = 10,
    lr: float | None = None,
    step: float = DEFAULT_STEP,
    maximize: bool = True,
    group: Literal["gl", "diag"] = "gl",
    least_squares: bool = False,
    X_pinv: torch.Tensor | None = None,
    bias: bool = False,
    nearest: bool = False,
    skip_invalid: bool = False,
) -> tuple[list[torch.Tensor], Callable[[list[torch.Tensor]], list[torch.Tensor]]]:
    """`steps` gradient steps on the group element, from g = I, that raise (maximize=True) or lower
    objective(g·W), a (B,) tensor differentiable in the weights W (weights[m] (B, d_{m+1}, d_m)), on X (B, d0, n).
    Returns the group parameters reached, detached, and the map that applies parameters to W.

    group="gl": g_m = I + T_m (T_m (B, k_m, k_m)) under the exact action on X, so the loss on X is unchanged.
    group="diag": g_m = diag(exp(s_m)) (s_m (B, k_m)) by `action.rescale`, which keeps the network's function on
    all data (X is not used).
    lr=None: normalized steps, T ← T ± step·G/‖G‖ per layer and task, G = ∂objective/∂T (or ∂/∂s): scale-free,
    and T (or s) moves at most step·steps from 0 per layer. A float lr takes plain steps T ← T ± lr·G.
    Other keywords as in `metatele.teleport.action.teleport`.
    """
    W0 = [w.detach() for w in weights]
    sign = 1.0 if maximize else -1.0
    B = W0[0].shape[0]
    if group == "gl":
        if X_pinv is None and not skip_invalid:
            X_pinv = pinv_full_rank(with_ones(X.detach()) if bias else X.detach(), least_squares)
        kw = dict(act=act, least_squares=least_squares, X_pinv=X_pinv, bias=bias, nearest=nearest,
                  skip_invalid=skip_invalid)
        T = [torch.zeros(B, w.shape[1], w.shape[1], dtype=w.dtype, device=w.device) for w in W0[:-1]]
        move: Callable[[list[torch.Tensor]], list[torch.Tensor]] = lambda T: teleport(W0, X, T, None, **kw)  # noqa: E731
    elif group == "diag":
        T = [torch.zeros(B, w.shape[1], dtype=w.dtype, device=w.device) for w in W0[:-1]]
        move = lambda s: rescale(W0, s)  # noqa: E731
    else:
        raise ConfigError(f"unknown teleport group {group!r}; choose 'gl' or 'diag'")
    with torch.enable_grad():
        for _ in range(steps):
            T = [t.detach().requires_grad_() for t in T]
            G = torch.autograd.grad(objective(move(T)).sum(), T, allow_unused=skip_invalid)
            G = [torch.zeros_like(t) if g is None else torch.nan_to_num(g) if skip_invalid else g for t, g in zip(T, G)]
            T = [t + sign * (step * _unit(gt) if lr is None else lr * gt) for t, gt in zip(T, G)]
    return [t.detach() for t in T], move


def ascend(weights: Sequence[torch.Tensor], X: torch.Tensor, objective: Callable[[list[torch.Tensor]], torch.Tensor],
           **kw: Any) -> list[torch.Tensor]:
    """Teleport W on X to raise or lower objective(g·W): `ascend_group` (same keywords), then its group element
    applied once. The result is detached from the input's graph."""
    T, move = ascend_group(weights, X, objective, **kw)
    return [w.detach() for w in move(T)]


def _unit(G: torch.Tensor) -> torch.Tensor:
    """G (B, k, k) or (B, k) scaled to unit Frobenius norm per task."""
    if G.dim() == 3:
        return normalize(G, 1.0)
    return G / G.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(G.dtype).tiny)
