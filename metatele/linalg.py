"""Batched linear algebra shared by the tasks and the teleports: pseudo-inverses that check h⁺h = I.

Shapes: h (B, d, n) → h⁺ (B, n, d).
"""
from __future__ import annotations

import torch

from metatele.errors import RankDeficientError

__all__ = ["qr_pinv", "qr_pinv_checked", "pinv_masked", "pinv_full_rank"]


def qr_pinv(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Q (B, d, n), h⁺ (B, n, d), ok (B,)) for h (B, d, n) with n ≤ d: for every task whose h is finite and of
    numerical rank n, the orthonormal basis Q of its columns (h = QR) and its pseudo-inverse (so that h⁺h = I);
    zeros for the others (ok False)."""
    d, n = h.shape[-2:]
    finite = torch.isfinite(h).flatten(1).all(1)
    Q, R = torch.linalg.qr(torch.where(finite[:, None, None], h, torch.zeros_like(h)))  # h = Q R
    diag = R.diagonal(dim1=-2, dim2=-1).abs()
    tol = max(d, n) * torch.finfo(h.dtype).eps * diag.amax(dim=-1, keepdim=True)
    ok = finite & (diag > tol).all(-1)
    eye = torch.eye(n, dtype=h.dtype, device=h.device).expand_as(R)
    R = torch.where(ok[:, None, None], R, eye)
    Q = torch.where(ok[:, None, None], Q, torch.zeros_like(Q))
    return Q, torch.linalg.solve_triangular(R, Q.transpose(-2, -1), upper=True), ok  # h⁺ = R⁻¹ Qᵀ


def pinv_masked(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(h⁺ (B, n, d), ok (B,)) for h (B, d, n) with n ≤ d: the pseudo-inverse of every task whose h is finite and
    of numerical rank n (so that h⁺h = I), and zeros for the others (ok False)."""
    _, hp, ok = qr_pinv(h)
    return hp, ok


def qr_pinv_checked(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`qr_pinv`'s (Q, h⁺), raising RankDeficientError where the exact action is impossible."""
    d, n = h.shape[-2:]
    if n > d:
        raise RankDeficientError(
            f"layer input has {d} rows but n={n} samples: rank ≤ {d} < n, so the exact group action "
            "is impossible (need n ≤ every hidden-layer input width); pass least_squares=True to accept an approximation"
        )
    Q, hp, ok = qr_pinv(h)
    if not bool(ok.all()):
        raise RankDeficientError(
            "a layer input is rank-deficient (numerical rank < n), so the exact group action is impossible; "
            "pass least_squares=True to accept an approximation"
        )
    return Q, hp


def pinv_full_rank(h: torch.Tensor, least_squares: bool = False) -> torch.Tensor:
    """Moore–Penrose pseudo-inverse of h (B, d, n) → (B, n, d), checking h⁺h = I.

    Raises RankDeficientError if some h has numerical rank < n, unless least_squares=True,
    in which case the plain pseudo-inverse is returned (the action then only keeps the loss
    approximately: it projects onto the row space of h).
    """
    if least_squares:
        return torch.linalg.pinv(h)
    return qr_pinv_checked(h)[1]
