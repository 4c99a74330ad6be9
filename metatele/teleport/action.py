"""Parameter-space symmetries of bias-free LeakyReLU MLPs, batched over tasks.

Group action of g_m ∈ GL(k_m) on hidden layer m (input h_{m-1}, weights W_m, W_{m+1}):

    W_{m+1} → W_{m+1} g_m⁻¹,    W_m → σ⁻¹(g_m σ(W_m h_{m-1})) h_{m-1}⁺.

It keeps the loss on X exactly when every h_{m-1} (d × n) has full column rank n. Layers are
processed in order, propagating h_m' = g_m h_m. Shapes: weights[m] (B, d_{m+1}, d_m); X (B, d0, n);
g and T are lists with one (B, k_m, k_m) tensor per hidden layer. `act` is the network's invertible
activation (`metatele.tasks.LeakyReLU`).

With bias=True every weight is augmented, W̃_m = [W_m b_m] (B, d_{m+1}, d_m + 1), acting on [h; 1]: the
action uses h̃ = [h; 1] in place of h (exact when n ≤ d + 1) and W_{m+1} g⁻¹ touches only the first k_m
columns of W̃_{m+1}, so the biases of the next layer are unchanged.

With nearest=True, W_m' is the solution of W' h_{m-1} = σ⁻¹(g_m σ(W_m h_{m-1})) nearest to W_m (in the
current, already right-multiplied weights W̃_m): W_m' = W_m + (σ⁻¹(g_m σ(W_m h)) − W_m h) h⁺. It keeps the loss
on X exactly as well, is the identity at g = I and leaves the part of W_m outside the row space of h alone.
The default minimum-norm formula σ⁻¹(g σ(W h)) h⁺ equals it when h is square (the paper's 20×20 tasks) but,
when n < d, projects W_m onto the row space of h even at g = I (on MNIST with a 16-sample batch it rewrites 99%
of the first layer), which ruins the network everywhere off the batch. The price: g2·(g1·W) = (g2 g1)·W holds
for the nearest map only when every hidden layer's input h_1 … h_{L-2} is square (n = k); otherwise it is a
loss-preserving map from the group into the level set, not a group action, since (g h)⁺ ≠ h⁺ g⁻¹.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch

from metatele.linalg import pinv_full_rank, pinv_masked, qr_pinv, qr_pinv_checked

if TYPE_CHECKING:
    from metatele.tasks.mlp import LeakyReLU

__all__ = ["pinv_masked", "pinv_full_rank", "layer_pinv", "with_ones", "group_action", "normalize", "teleport",
           "rescale", "grad_norm_sq"]

Weights = list[torch.Tensor]


def layer_pinv(hin: torch.Tensor, cached: torch.Tensor | None, ok: torch.Tensor, least_squares: bool = False,
               skip_invalid: bool = False) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """(Q, hin⁺, ok) for a layer input hin (B, d, n) of the action: hin⁺ (B, n, d) is `cached` if given (Q None);
    else the plain pseudo-inverse if least_squares (Q None); else from hin = QR, Q (B, d, n) the orthonormal basis
    of hin's columns: with skip_invalid (and n ≤ d) masked, its invalid tasks turned off in `ok` (B,), otherwise
    raising RankDeficientError where the exact action is impossible."""
    if cached is not None:
        return None, cached, ok
    if least_squares:
        return None, torch.linalg.pinv(hin), ok
    if skip_invalid and hin.shape[-1] <= hin.shape[-2]:
        Q, hp, ok_m = qr_pinv(hin)
        return Q, hp, ok & ok_m
    return (*qr_pinv_checked(hin), ok)


def with_ones(h: torch.Tensor) -> torch.Tensor:
    """[h; 1]: h (B, d, n) with a row of ones appended, (B, d + 1, n)."""
    return torch.cat([h, h.new_ones(h.shape[0], 1, h.shape[2])], dim=1)


def _pairwise_action(
    weights: Sequence[torch.Tensor],
    X: torch.Tensor,
    g: Sequence[torch.Tensor],
    right: Callable[[torch.Tensor, int], torch.Tensor],
    act: LeakyReLU,
    least_squares: bool,
    X_pinv: torch.Tensor | None,
    bias: bool = False,
    skip_invalid: bool = False,
    nearest: bool = False,
) -> Weights:
    """Shared pair-by-pair action; `right(W_next, m)` maps W_{m+1} (its first k_m columns if bias) to its
    transformed value. X_pinv, if given, is the pseudo-inverse of the first layer's input ([X; 1] if bias).
    skip_invalid: a task whose layer input is non-finite or rank-deficient keeps its weights (g = I for it)
    instead of failing the batch."""
    if len(g) != len(weights) - 1:
        raise ValueError(f"need one group element per hidden layer ({len(weights) - 1}), got {len(g)}")
    new = list(weights)
    h = X
    ok = torch.ones(X.shape[0], dtype=torch.bool, device=X.device)
    for m, gm in enumerate(g):
        hin = with_ones(h) if bias else h
        _, hp, ok = layer_pinv(hin, X_pinv if m == 0 else None, ok, least_squares, skip_invalid)
        a = torch.bmm(gm, act(torch.bmm(new[m], hin)))  # g σ(W_m h_{m-1}) = h_m'
        z = act.inverse(a)
        if nearest and hin.shape[-1] < hin.shape[-2]:  # (square h: both formulas are the same map)
            W = new[m] + torch.bmm(z - torch.bmm(new[m], hin), hp)
        else:
            W = torch.bmm(z, hp)
        # One step of iterative refinement on the residual z − W h: deep layers of all-positive
        # nets have cond(h) up to ~1e9, and this brings the loss change back to ~1e-15.
        new[m] = W + torch.bmm(z - torch.bmm(W, hin), hp)
        if bias:
            k = gm.shape[-1]
            new[m + 1] = torch.cat([right(new[m + 1][..., :k], m), new[m + 1][..., k:]], dim=-1)
        else:
            new[m + 1] = right(new[m + 1], m)
        h = a
    if skip_invalid:
        keep = ok[:, None, None]
        new = [torch.where(keep, a, b) for a, b in zip(new, weights)]
    return new


def group_action(
    weights: Sequence[torch.Tensor],
    X: torch.Tensor,
    g: Sequence[torch.Tensor],
    *,
    act: LeakyReLU,
    least_squares: bool = False,
    X_pinv: torch.Tensor | None = None,
    bias: bool = False,
    skip_invalid: bool = False,
    nearest: bool = False,
) -> Weights:
    """Exact action of invertible g_m (B, k_m, k_m) on every hidden layer. X_pinv: optional cached X⁺."""
    return _pairwise_action(weights, X, g, lambda W, m: torch.linalg.solve(g[m], W, left=False), act,
                            least_squares, X_pinv, bias, skip_invalid, nearest)


def normalize(T: torch.Tensor, magnitude: float | torch.Tensor) -> torch.Tensor:
    """Scale each T (B, k, k) to Frobenius norm `magnitude` (broadcast over B if it is (B,))."""
    norm = torch.linalg.matrix_norm(T).clamp_min(torch.finfo(T.dtype).tiny)
    return T * (torch.as_tensor(magnitude, dtype=T.dtype, device=T.device) / norm)[:, None, None]


def teleport(
    weights: Sequence[torch.Tensor],
    X: torch.Tensor,
    T: Sequence[torch.Tensor],
    magnitude: float | torch.Tensor | Sequence[float | torch.Tensor] | None,
    *,
    act: LeakyReLU,
    exact: bool = True,
    least_squares: bool = False,
    X_pinv: torch.Tensor | None = None,
    bias: bool = False,
    skip_invalid: bool = False,
    nearest: bool = False,
) -> Weights:
    """Teleport with g_m = I + T_m, each T_m first normalized to Frobenius norm `magnitude` (None: as given).
    magnitude may be one value for all layers or a per-layer list; each value is a float or a (B,) tensor.

    exact=False is the paper's first-order variant: W_{m+1} → W_{m+1}(I − T_m), which leaves the
    level set by O(magnitude²).
    """
    if magnitude is not None:
        per_layer = magnitude if isinstance(magnitude, (list, tuple)) else [magnitude] * len(T)
        T = [normalize(t, e) for t, e in zip(T, per_layer)]
    eye = [torch.eye(t.shape[-1], dtype=t.dtype, device=t.device) for t in T]
    g = [e + t for e, t in zip(eye, T)]
    if exact:
        return group_action(weights, X, g, act=act, least_squares=least_squares, X_pinv=X_pinv, bias=bias,
                            skip_invalid=skip_invalid, nearest=nearest)
    return _pairwise_action(weights, X, g, lambda W, m: W - torch.bmm(W, T[m]), act, least_squares, X_pinv, bias,
                            skip_invalid, nearest)


def rescale(weights: Sequence[torch.Tensor], s: Sequence[torch.Tensor]) -> Weights:
    """Positive diagonal rescaling g_m = diag(exp(s_m)), s_m (B, k_m): exact for any data.

    W_m → diag(e^s) W_m, W_{m+1} → W_{m+1} diag(e^-s), since σ(c z) = c σ(z) for c > 0. With augmented
    weights [W b] the bias of layer m scales with its row and the next layer's bias column is unchanged.
    """
    new = list(weights)
    for m, sm in enumerate(s):
        k = sm.shape[-1]
        new[m] = new[m] * sm.exp()[:, :, None]
        nxt = new[m + 1]
        new[m + 1] = torch.cat([nxt[..., :k] * (-sm).exp()[:, None, :], nxt[..., k:]], dim=-1)
    return new


def grad_norm_sq(grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """Σ_m ‖∇W_m L‖_F² per task, shape (B,)."""
    return sum(g.pow(2).sum(dim=(1, 2)) for g in grads)
