"""Two properties of a minimum (Zhao et al., ICLR 2024, §5): sharpness φ and the curvature ψ of symmetry orbits.

- Sharpness φ (any nn.Module): the mean increase of the loss, L(w + t·d) − L(w), over radii t, random unit
  directions d of the whole parameter vector and data batches. The paper's radius grid is `PAPER_RADII`
  (t = 0.001 … 0.191 in steps of 0.01). The paper's code averages the perturbed loss itself (not its increase),
  draws d with uniform positive entries and divides by the batch size; dist="uniform" gives its directions
  (the default, dist="normal", uses antithetic pairs of isotropic directions).
- Curvature ψ (a teleportable `nn.Sequential` MLP, read by the adapter `metatele.nn`): for random M_m ∈ gl(k_m),
  one per hidden layer, entries U[0, 1) as in the paper and ‖M_m‖_F = 1, the curvature at t = 0 of the orbit
  γ(t) = exp(tM)·w of the nearest exact group action (`action.group_action(..., nearest=True)`) on a batch X:
  κ = sqrt(‖γ'‖²‖γ''‖² − ⟨γ',γ''⟩²) / ‖γ'‖³, averaged over the draws of M.

γ' and γ'' are analytic (`orbit_derivatives`). With Z_m = W_m h̃_{m-1}, A_m = σ(Z_m), S_m = 1/σ'(Z_m), h̃ the
layer input ([h; 1] with biases), P_{m-1} = h̃_{m-1}⁺ and σ'' = 0 (LeakyReLU), the action composes layer by
layer as W_m(t) = W_m g_{m-1}(t)⁻¹ + (σ⁻¹(g_m(t) A_m) − Z_m) P_{m-1}(t), where h_{m-1}(t) = g_{m-1}(t) A_{m-1}.
Differentiating at t = 0 (g' = M, g'' = M²):

    γ'_m  = −W_m M_{m-1} + (S_m ⊙ M_m A_m) P_{m-1}
    γ''_m =  W_m M_{m-1}² + (S_m ⊙ M_m² A_m) P_{m-1} + 2 (S_m ⊙ M_m A_m) P'_{m-1},

with P' the derivative of the pseudo-inverse along h̃'_{m-1} = [M_{m-1} A_{m-1}; 0] (the first layer has only
the second term, the last only the first; W_m M acts on the first k columns of [W b]). The paper's code omits
the P' term, which is non-zero from the second hidden layer on. When the batch exceeds a hidden layer's input
width (+1 with biases; the paper's 200-sample batches against its 16-wide layer) there is no exact action: the
formulas are then those of the least-squares extension (pseudo-inverses), whose orbit leaves the level set.

Both measures are deterministic given a seed: the random draws come from a CPU generator in float64 and are
then moved to the model's device and dtype, so CPU and GPU see the same directions.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Literal

import torch
from torch import nn
from torch.func import functional_call, vmap

from metatele.errors import ConfigError, RankDeficientError
from metatele.nn import inspect_mlp
from metatele.tasks.mlp import LeakyReLU
from metatele.teleport.action import pinv_full_rank, with_ones

__all__ = ["PAPER_RADII", "sharpness", "perturbed_loss_increase", "random_directions", "lie_directions",
           "orbit_derivatives", "orbit_curvature", "curvature"]

PAPER_RADII: tuple[float, ...] = tuple(round(0.001 + 0.01 * i, 3) for i in range(20))

Dist = Literal["normal", "uniform"]


def _draw(shape: tuple[int, ...], gen: torch.Generator, dist: Dist) -> torch.Tensor:
    if dist == "normal":
        return torch.randn(shape, generator=gen, dtype=torch.float64)
    if dist == "uniform":
        return torch.rand(shape, generator=gen, dtype=torch.float64)
    raise ConfigError(f"unknown direction distribution {dist!r}; choose 'normal' or 'uniform'")


def random_directions(params: Mapping[str, torch.Tensor], n_dirs: int, seed: int, dist: Dist = "normal"
                      ) -> dict[str, torch.Tensor]:
    """n_dirs random directions of the whole parameter vector, each of unit norm over all parameters together:
    name → (n_dirs, *param.shape), on the parameters' device and dtype.

    dist="normal" draws antithetic pairs (d, −d), so n_dirs must be even: the pair cancels the first-order term
    of L(w + t·d) exactly, which leaves the expectation unchanged (the law is symmetric) and removes most of the
    noise away from a critical point. dist="uniform" (the paper's, entries U[0, 1)) draws n_dirs independently.
    """
    gen = torch.Generator().manual_seed(seed)
    sizes = [p.numel() for p in params.values()]
    if dist == "normal":
        if n_dirs % 2:
            raise ConfigError(f"normal directions come in antithetic pairs: n_dirs must be even, got {n_dirs}")
        half = _draw((n_dirs // 2, sum(sizes)), gen, dist)
        flat = torch.cat([half, -half])
    else:
        flat = _draw((n_dirs, sum(sizes)), gen, dist)
    flat = flat / flat.norm(dim=1, keepdim=True)
    return {name: chunk.reshape(n_dirs, *p.shape).to(device=p.device, dtype=p.dtype)
            for (name, p), chunk in zip(params.items(), flat.split(sizes, dim=1))}


def perturbed_loss_increase(
    model: nn.Module,
    params: Mapping[str, torch.Tensor],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    X: torch.Tensor,
    y: torch.Tensor,
    radii: torch.Tensor,
    directions: Mapping[str, torch.Tensor],
    chunk_size: int | None = 256,
) -> torch.Tensor:
    """L(w + t·d) − L(w) on one batch (X, y) for every radius t (R,) and direction d (D of them): (R, D).

    w is `params` (name → tensor, differentiable), plugged into `model` by torch.func.functional_call; the R·D
    perturbed networks are evaluated together by vmap, `chunk_size` at a time. loss_fn(output, y) → scalar.
    """
    def loss_at(p: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return loss_fn(functional_call(model, dict(p), (X,)), y)

    R, D = radii.shape[0], next(iter(directions.values())).shape[0]
    shifted = {}
    for name, p in params.items():
        t = radii.to(p).reshape(R, 1, *([1] * p.dim()))
        shifted[name] = (p[None, None] + t * directions[name][None]).reshape(R * D, *p.shape)
    return vmap(loss_at, chunk_size=chunk_size)(shifted).reshape(R, D) - loss_at(params)


def sharpness(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    radii: Sequence[float] = PAPER_RADII,
    n_dirs: int = 8,
    seed: int = 0,
    *,
    dist: Dist = "normal",
    params: Mapping[str, torch.Tensor] | None = None,
    chunk_size: int | None = 256,
) -> torch.Tensor:
    """Sharpness φ: the mean over batches (X, y), radii and n_dirs unit directions of L(w + t·d) − L(w) (0-dim).

    The same n_dirs directions (drawn from `seed`, over all of `params`) serve every radius and batch.
    params: name → tensor to evaluate at instead of the model's own parameters (differentiable; the model then
    only supplies the computation). The model is used in its current train/eval mode.
    """
    if params is None:
        params = {k: v.detach() for k, v in model.named_parameters()}
    if n_dirs < 1 or len(radii) == 0:
        raise ConfigError(f"sharpness needs n_dirs ≥ 1 and at least one radius, got {n_dirs} and {list(radii)}")
    dirs = random_directions(params, n_dirs, seed, dist)
    p0 = next(iter(params.values()))
    r = torch.tensor(list(radii), dtype=p0.dtype, device=p0.device)
    per_batch = [perturbed_loss_increase(model, params, loss_fn, X, y, r, dirs, chunk_size).mean()
                 for X, y in batches]
    if not per_batch:
        raise ConfigError("sharpness needs at least one data batch")
    return torch.stack(per_batch).mean()


def lie_directions(widths: Sequence[int], n_dirs: int, seed: int, *, dtype: torch.dtype = torch.float64,
                   device: torch.device | str = "cpu", dist: Dist = "uniform") -> list[torch.Tensor]:
    """Random M_m ∈ gl(k_m) for each hidden width k_m in `widths`: (n_dirs, k_m, k_m), each of Frobenius norm 1.
    dist="uniform" (entries U[0, 1) before normalizing) is the paper's choice."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for k in widths:
        M = _draw((n_dirs, k, k), gen, dist)
        out.append((M / torch.linalg.matrix_norm(M)[:, None, None]).to(device=device, dtype=dtype))
    return out


def _pad_cols(t: torch.Tensor, extra: int) -> torch.Tensor:
    return t if extra == 0 else torch.cat([t, t.new_zeros(*t.shape[:-1], extra)], dim=-1)


def _pinv(H: torch.Tensor) -> torch.Tensor:
    """H⁺ (B, n, p) of H (B, p, n): by QR when H has full column or full row rank (the usual case), else by SVD."""
    try:
        if H.shape[-1] <= H.shape[-2]:
            return pinv_full_rank(H)
        return pinv_full_rank(H.transpose(-2, -1)).transpose(-2, -1)
    except RankDeficientError:
        return torch.linalg.pinv(H)


def _times_dpinv(D: torch.Tensor, A: torch.Tensor, P: torch.Tensor, dA: torch.Tensor) -> torch.Tensor:
    """D · (d A⁺) for a constant-rank A (p, n) with P = A⁺, along dA (B, p, n); D (B, k, n) → (B, k, p).

    d A⁺ = −A⁺ dA A⁺ + A⁺A⁺ᵀ dAᵀ (I − A A⁺) + (I − A⁺A) dAᵀ A⁺ᵀ A⁺ (Golub & Pereyra 1973).
    """
    dAt = dA.transpose(-2, -1)
    DP = D @ P
    Q = DP @ P.transpose(-2, -1) @ dAt
    return -DP @ dA @ P + (Q - Q @ A @ P) + (D - DP @ A) @ dAt @ P.transpose(-2, -1) @ P


def orbit_derivatives(
    weights: Sequence[torch.Tensor],
    X: torch.Tensor,
    M: Sequence[torch.Tensor],
    *,
    act: LeakyReLU,
    bias: bool = False,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """γ'(0) and γ''(0) of the orbit t ↦ exp(tM)·W of the nearest action (formulas in the module docstring).

    weights[m] (Bw, d_{m+1}, d_m [+ 1]) and X (Bw, d0, n) with Bw = 1 (shared) or B; M[m] (B, k_m, k_m), one per
    hidden layer. Returns two lists of (B, d_{m+1}, d_m [+ 1]) tensors, differentiable in weights and M.
    """
    if len(M) != len(weights) - 1:
        raise ConfigError(f"need one Lie-algebra element per hidden layer ({len(weights) - 1}), got {len(M)}")
    extra = int(bias)
    d1: list[torch.Tensor | None] = [None] * len(weights)
    d2: list[torch.Tensor | None] = [None] * len(weights)
    h, dh = X, None
    for m, Mm in enumerate(M):
        H = with_ones(h) if bias else h
        P = _pinv(H)
        Z = weights[m] @ H
        A = act(Z)
        S = torch.where(Z > 0, torch.ones_like(Z), torch.full_like(Z, 1.0 / act.slope))
        MA = Mm @ A
        D1, D2 = S * MA, S * (Mm @ MA)
        own1, own2 = D1 @ P, D2 @ P
        if dh is not None:
            own2 = own2 + 2 * _times_dpinv(D1, H, P, dh)
        d1[m] = own1 if d1[m] is None else d1[m] + own1
        d2[m] = own2 if d2[m] is None else d2[m] + own2
        WM = weights[m + 1][..., : Mm.shape[-1]] @ Mm
        d1[m + 1], d2[m + 1] = _pad_cols(-WM, extra), _pad_cols(WM @ Mm, extra)
        h = A
        dh = torch.cat([MA, MA.new_zeros(MA.shape[0], 1, MA.shape[2])], dim=1) if bias else MA
    return list(d1), list(d2)  # type: ignore[arg-type]


def orbit_curvature(
    weights: Sequence[torch.Tensor],
    X: torch.Tensor,
    M: Sequence[torch.Tensor],
    *,
    act: LeakyReLU,
    bias: bool = False,
) -> torch.Tensor:
    """κ = sqrt(‖γ'‖²‖γ''‖² − ⟨γ',γ''⟩²) / ‖γ'‖³ for each of the B draws of M: (B,). Shapes as `orbit_derivatives`."""
    d1, d2 = orbit_derivatives(weights, X, M, act=act, bias=bias)
    a = sum(g.pow(2).sum(dim=(-2, -1)) for g in d1)
    c = sum(g.pow(2).sum(dim=(-2, -1)) for g in d2)
    dot = sum((g * q).sum(dim=(-2, -1)) for g, q in zip(d1, d2))
    return (a * c - dot.pow(2)).clamp_min(0).sqrt() / a.pow(1.5)


def curvature(model: nn.Sequential, X: torch.Tensor, n_dirs: int = 16, seed: int = 0, *,
              dist: Dist = "uniform") -> torch.Tensor:
    """Curvature ψ of the orbits through a teleportable MLP's weights on data X (n, d0): the mean of
    `orbit_curvature` over n_dirs draws of M (`lie_directions`, from `seed`); 0-dim, in the model's dtype."""
    chain = inspect_mlp(model, "the orbit curvature")
    W = chain.get_weights()
    XT = chain.inputs_T(X).to(W[0])
    M = lie_directions(chain.widths[1:-1], n_dirs, seed, dtype=W[0].dtype, device=W[0].device, dist=dist)
    return orbit_curvature(W, XT, M, act=chain.act, bias=chain.bias).mean()
