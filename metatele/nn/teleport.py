"""Teleporting a chain (`metatele.nn.chains.Chain`) in place, exactly where possible, saying what was done.

`teleport_chain_(chain, X, T)` applies g_m = I + T_m to the chain's first len(T) hidden layers by the nearest
exact action (`metatele.teleport.action`, nearest=True), computed in float64 and written back in the model's
dtype. It keeps the chain's outputs on its input batch X (n, d0) when the action is exact there:

- Exact rows (`exact_rows`): the action is exact on n samples when n ≤ every teleported hidden layer's input
  width (+1 with biases), `Chain.max_batch`, and those layers' inputs have full column rank on them. **Fallback** when it is
  not (too many samples, or a rank-deficient batch): the action is exact on the first min(n, max_batch) rows,
  halved until they have full rank; `TeleportResult.exact_samples` says how many, and callers that know the loss
  measure its drift on the whole batch (`loss_before`/`loss_after`, `drift`).
- Check: the written-back outputs on the exact rows may move by at most `rtol` (relative to their largest
  magnitude); else T is halved, up to `MAX_HALVINGS` times, and otherwise the teleport is undone (outcome
  "undone", the weights as before). A batch with no exact row, or a singular action, is "skipped".
"""
from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from metatele.errors import RankDeficientError
from metatele.nn.chains import Chain
from metatele.tasks.mlp import LeakyReLU, forward
from metatele.teleport.action import normalize, pinv_full_rank, teleport, with_ones

__all__ = ["DEFAULT_RTOL", "MAX_HALVINGS", "OUTCOMES", "TeleportWarning", "TeleportResult", "exact_rows",
           "full_rank_rows", "teleport_chain_"]

DEFAULT_RTOL = 1e-4  # largest relative change of the outputs on the exact rows that a teleport may cause
MAX_HALVINGS = 4  # halvings of T tried before a teleport that breaks the tolerance is undone
OUTCOMES = ("applied", "undone", "skipped")
_NAN = math.nan


class TeleportWarning(UserWarning):
    """A teleport was undone or skipped, or exact only on a sub-batch (warned once per run, always counted)."""


@dataclass(frozen=True)
class TeleportResult:
    """One teleport (the one result type of metatele's teleports on a user's model).

    n_samples: rows of the teleport batch; exact_samples: its leading rows on which the action is exact (fewer:
    the fallback; 0: skipped). outcome: "applied", "undone" or "skipped" (weights unchanged for the last two);
    reason: why, when not applied exactly on the whole batch. magnitude: ‖T_m‖_F per teleported hidden layer as
    applied (empty if not applied); halvings: of T before it met the tolerance. output_drift: the largest relative
    change of the outputs on the exact rows. loss_*/grad_norm_sq_*: on the whole batch, in the model's dtype, when
    the caller knows the loss (else NaN). objective: what the teleport raised or lowered, with its values."""

    n_samples: int
    exact_samples: int
    outcome: str
    magnitude: tuple[float, ...] = ()
    halvings: int = 0
    output_drift: float = _NAN
    reason: str = ""
    loss_before: float = _NAN
    loss_after: float = _NAN
    grad_norm_sq_before: float = _NAN
    grad_norm_sq_after: float = _NAN
    objective: str = "grad_norm_sq"
    objective_before: float = _NAN
    objective_after: float = _NAN
    seconds: float = 0.0

    @property
    def applied(self) -> bool:
        return self.outcome == "applied"

    @property
    def drift(self) -> float:
        """|L_after − L_before| / |L_before| on the whole teleport batch."""
        return abs(self.loss_after - self.loss_before) / max(abs(self.loss_before), torch.finfo(torch.float64).tiny)

    @property
    def gain(self) -> float:
        """‖∇L‖² after / before."""
        return self.grad_norm_sq_after / max(self.grad_norm_sq_before, torch.finfo(torch.float64).tiny)


def exact_rows(chain: Chain, X: torch.Tensor, layers: int | None = None) -> int:
    """How many leading samples of X (1, d0, n) the exact action on the first `layers` hidden layers (default all)
    keeps at the chain's current weights: `full_rank_rows` of its teleported layers, up to `Chain.max_batch`."""
    j = chain.check_layers(layers)
    return full_rank_rows([w.to(X) for w in chain.get_weights()[:j]], X, chain.act, chain.bias, chain.max_batch(j))


def full_rank_rows(weights: Sequence[torch.Tensor], X: torch.Tensor, act: LeakyReLU, bias: bool, limit: int) -> int:
    """The number of leading samples of X (B, d0, n) on which the inputs of the layers `weights` (B, d_{m+1}, d_m
    [+ 1]; the teleported ones) have full column rank for every task (0: none): min(n, limit) if they do, else
    halved until they do. An invertible g keeps these ranks, so the answer holds for the teleported weights too."""
    n = min(X.shape[-1], limit)
    while n > 0:
        h = X[..., :n]
        try:
            for W in weights:
                hin = with_ones(h) if bias else h
                pinv_full_rank(hin)
                h = act(torch.bmm(W, hin))
            return n
        except RankDeficientError:
            n //= 2
    return 0


def _relative_change(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(torch.finfo(b.dtype).tiny))


def teleport_chain_(chain: Chain, X: torch.Tensor, T: Sequence[torch.Tensor], magnitude: float | Sequence[float] |
                    None = None, *, rtol: float = DEFAULT_RTOL) -> TeleportResult:
    """Apply g_m = I + T_m in place to the chain's first len(T) hidden layers (T_m (k_m, k_m) or (1, k_m, k_m),
    each scaled to Frobenius norm `magnitude` (one value or one per layer) unless None), on the chain's input batch
    X (n, d0), with the fallback and check of the module docstring. Loss fields are left NaN."""
    t0 = time.perf_counter()
    j = chain.check_layers(len(T))
    W0 = chain.get_weights()
    X64 = chain.inputs_T(X).to(dtype=torch.float64, device=W0[0].device)
    n = exact_rows(chain, X64, j)
    if n == 0:
        return TeleportResult(X.shape[0], 0, "skipped", reason="no leading rows of the batch have full rank",
                              seconds=time.perf_counter() - t0)
    Xe = X64[..., :n]
    Wd = [w.double() for w in W0]
    Td = [(t if t.dim() == 3 else t[None]).to(Wd[0]) for t in T]
    if magnitude is not None:
        mags = magnitude if isinstance(magnitude, (list, tuple)) else [magnitude] * len(Td)
        Td = [normalize(t, float(m)) for t, m in zip(Td, mags)]
    X_pinv = pinv_full_rank(with_ones(Xe) if chain.bias else Xe)
    Xm = Xe.to(W0[0].dtype)
    out0 = forward(W0, Xm, chain.act, chain.bias)
    reason = ""
    for halvings in range(MAX_HALVINGS + 1):
        Th = [t * 0.5 ** halvings for t in Td]
        try:
            new = teleport(Wd[: j + 1], Xe, Th, None, act=chain.act, X_pinv=X_pinv, bias=chain.bias, nearest=True)
        except RankDeficientError as e:  # g·W made a deeper layer input singular: try a smaller T
            reason = str(e)
            continue
        W1 = [w.to(W0[0].dtype) for w in new] + W0[j + 1:]
        drift = _relative_change(forward(W1, Xm, chain.act, chain.bias), out0)
        if math.isfinite(drift) and drift <= rtol:
            chain.set_weights_(W1)
            limit = chain.max_batch(j)
            why = "" if n == X.shape[0] else (f"exact on {n} of {X.shape[0]} samples: the exact limit is {limit}"
                                              + (", halved while rank-deficient" if n < min(limit, X.shape[0]) else ""))
            return TeleportResult(X.shape[0], n, "applied", tuple(float(torch.linalg.matrix_norm(t[0])) for t in Th),
                                  halvings, drift, why, seconds=time.perf_counter() - t0)
        reason = f"the outputs on the exact rows moved by {drift:.2e} > rtol={rtol:g} even after {halvings} halvings"
    outcome = "undone" if reason.startswith("the outputs") else "skipped"
    return TeleportResult(X.shape[0], n, outcome, halvings=MAX_HALVINGS, reason=reason,
                          seconds=time.perf_counter() - t0)
