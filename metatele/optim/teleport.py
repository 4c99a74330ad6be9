"""Teleport inside `LearnedOptimizer`, on the chains of a user's model (`metatele.nn.Chain`: Linear,
(LeakyReLU, Linear)+ runs, with or without biases).

The method proposes the teleport (its direction and magnitude); the adapter applies it (`metatele.nn.teleport_chain_`:
the nearest exact action on the chain's input batch, its sub-batch fallback and its check; or, for a proposed positive
rescaling of the hidden units, `metatele.teleport.action.rescale`, exact on any data). What the optimizer adds
is the teleport batch and the objective:

- Batch. `"step"`: the chain's input X (n, d0) and the gradient of the loss with respect to the chain's output
  dZ (n, dL) are captured from the current step's forward and backward passes, by hooks on the chain's first and
  last Linear (armed only on teleport steps). Or a callable `sampler()` that returns the loss on a batch of its
  choice (for example `lambda: F.cross_entropy(model(x_t), y_t)`): it is evaluated at the updated weights for X
  and dZ, and again after the teleport, so the loss drift on that whole batch is measured exactly.
- Objective. The exact action keeps the chain's outputs on the exact rows, so everything after the chain, and
  hence dZ, is unchanged along the orbit there. The model's loss as a function of the chain's weights near the
  orbit is therefore, for gradients, ⟨dZ, Z(W)⟩ on those rows (`ChainTask`), and ‖∇L‖² and its steepest-ascent
  direction need neither the targets nor the loss function. With `"step"`, dZ is the one at the step's start
  (the update has moved the weights since), so the direction is first-order accurate in the update; the action
  stays exact either way.

Every teleport is recorded (`TeleportRecord`); one that is undone, skipped or exact only on a sub-batch is counted
and warned once per optimizer.
"""
from __future__ import annotations

import math
import warnings
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from metatele.nn import Chain, TeleportResult, TeleportWarning, exact_rows, teleport_chain_
from metatele.tasks.base import Batch, Symmetry, TeleportData, loss_and_grad
from metatele.tasks.mlp import LeakyReLU, forward
from metatele.teleport.action import rescale

__all__ = ["Capture", "ChainTask", "TeleportRecord", "ChainTeleporter"]

Sampler = Callable[[], torch.Tensor]
HISTORY = 10_000  # teleport records kept (the counts cover all)


class Capture:
    """Hooks on a chain that record, while `armed`, its input X (n, d0) and the gradient dZ (n, dL) of the loss with
    respect to its output, from one forward and backward pass (leading dims beyond one are flattened into n)."""

    def __init__(self, chain: Chain) -> None:
        self.armed = False
        self.X: torch.Tensor | None = None
        self.Z: torch.Tensor | None = None
        self.dZ: torch.Tensor | None = None
        self._x: torch.Tensor | None = None
        self._handles = [chain.linears[0].register_forward_pre_hook(self._pre),
                         chain.linears[-1].register_forward_hook(self._post)]

    def _pre(self, module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        if self.armed and torch.is_grad_enabled():
            self._x = args[0]

    def _post(self, module: torch.nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> None:
        x, self._x = self._x, None
        if self.armed and x is not None and out.requires_grad:
            self.X, self.Z, self.dZ = x.detach(), out, None
            out.register_hook(self._grad)

    def _grad(self, g: torch.Tensor) -> None:
        self.dZ = g.detach()

    def take(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(X (n, d0), dZ (n, dL)) of the last captured pass with a backward, or None; clears the capture."""
        X, dZ = self.X, self.dZ
        self.X = self.Z = self.dZ = None
        if X is None or dZ is None:
            return None
        return X.reshape(-1, X.shape[-1]), dZ.reshape(-1, dZ.shape[-1])

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


@dataclass
class ChainTask:
    """One chain on a captured batch as a task of one (the `TaskBatch` protocol, for the methods' teleport
    directions): loss(W) = ⟨dZ, Z(W)⟩ (see the module docstring). X (1, d0, n), dZ (1, dL, n); teleport data: the
    first `rows` samples, on which the action is exact."""

    chain: Chain
    X: torch.Tensor
    dZ: torch.Tensor
    rows: int
    seeds: list[int] = field(default_factory=lambda: [0])
    symmetry: Symmetry = Symmetry.GL

    @property
    def activation(self) -> LeakyReLU:
        return self.chain.act

    @property
    def bias(self) -> bool:
        return self.chain.bias

    @property
    def widths(self) -> tuple[int, ...]:
        return self.chain.widths

    def init_weights(self) -> list[torch.Tensor]:
        return [w.float() for w in self.chain.get_weights()]

    def data(self, step: int) -> Batch:
        return Batch(self.X, self.dZ)

    def teleport_data(self, step: int) -> TeleportData:
        return TeleportData(Batch(self.X[..., : self.rows], self.dZ[..., : self.rows]))

    def loss(self, weights: Sequence[torch.Tensor], data: Batch) -> torch.Tensor:
        return (forward(weights, data.X, self.chain.act, self.chain.bias) * data.Y).sum(dim=(1, 2))

    def loss_and_grad(self, weights: Sequence[torch.Tensor], data: Batch, *, create_graph: bool = False,
                      retain_graph: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return loss_and_grad(self.loss, weights, data, create_graph=create_graph, retain_graph=retain_graph)

    def to(self, device: torch.device | str) -> ChainTask:
        return replace(self, X=self.X.to(device), dZ=self.dZ.to(device))


@dataclass(frozen=True)
class TeleportRecord:
    """One teleport of one chain at optimizer step `step`: the adapter's result (loss_before/loss_after on the
    sampler's whole batch when a sampler gave it), and the relative change of the chain's outputs on the whole
    teleport batch (the exact rows keep them; the other rows of a sub-batch fallback do not)."""

    step: int
    chain: str
    result: TeleportResult
    output_drift_full: float = math.nan


class ChainTeleporter:
    """Teleports the chains of a model for a `LearnedOptimizer` (see the module docstring)."""

    def __init__(self, chains: Sequence[Chain], every: int, batch: str | Sampler) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 0:
            raise ValueError(f"teleport_every must be an integer ≥ 0 (0: never), got {every!r}")
        if not (batch == "step" or callable(batch)):
            raise ValueError("teleport_batch must be 'step' or a callable returning the loss on a batch, got "
                             f"{batch!r}")
        self.every, self.sampler = every, None if batch == "step" else batch
        self.captures = {c.names: Capture(c) for c in chains}
        self.counts: Counter[str] = Counter()
        self.history: deque[TeleportRecord] = deque(maxlen=HISTORY)
        self._warned = False

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def arm(self, step: int) -> None:
        """Capture the current step's batch if step `step` teleports (and no sampler gives the batch)."""
        for cap in self.captures.values():
            cap.armed = self.sampler is None and self.due(step)

    def batch(self, chains: Sequence[Chain]) -> tuple[dict[tuple[str, ...], tuple[torch.Tensor, torch.Tensor] | None],
                                                      float]:
        """Each chain's (X, dZ) for this step, and the sampler's loss (NaN without one)."""
        if self.sampler is None:
            return {c.names: self.captures[c.names].take() for c in chains}, math.nan
        for c in chains:
            self.captures[c.names].armed = True
        try:
            with torch.enable_grad():
                loss = self.sampler()
                outs = {c.names: self.captures[c.names].Z for c in chains}
                live = [k for k, z in outs.items() if z is not None]
                if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                    raise TypeError("teleport_batch must return the loss on its batch as a one-element tensor, got "
                                    f"{type(loss).__name__}")
                grads = torch.autograd.grad(loss, [outs[k] for k in live], allow_unused=True) if live else []
        finally:
            for c in chains:
                self.captures[c.names].armed = False
        found = {}
        for c in chains:
            cap = self.captures[c.names]
            g = dict(zip(live, grads)).get(c.names)
            found[c.names] = None if cap.X is None or g is None else (
                cap.X.reshape(-1, cap.X.shape[-1]), g.detach().reshape(-1, g.shape[-1]))
            cap.X = cap.Z = cap.dZ = None
        return found, float(loss.detach())

    def teleport(self, chain: Chain, proposal: Any, weights: list[torch.Tensor], step: int,
                 batch: tuple[torch.Tensor, torch.Tensor] | None, loss_before: float) -> TeleportRecord:
        """Apply `proposal` to `chain`, whose parameters hold `weights` (the updated ones, (1, d_out, d_in [+ 1])
        float32), on `batch`; record and count it. A proposal with a `direction(weights, task, data)` method is a GL
        teleport, applied by the exact action on the batch; one with `rescaling` (s_m (1, k_m) per hidden layer)
        rescales the hidden units (`metatele.teleport.action.rescale`), exact on any data, so it needs no batch."""
        name = "/".join(chain.names)
        rescaling = getattr(proposal, "rescaling", None)
        if rescaling is None and batch is None:
            res = TeleportResult(0, 0, "skipped", reason="no batch was captured for this chain in this step (it did "
                                 "not run forward and backward with gradients)")
            return self._record(TeleportRecord(step, name, res))
        X32 = None if batch is None else batch[0].to(torch.float32).T[None]
        before = None if X32 is None else forward(weights, X32, chain.act, chain.bias)
        if rescaling is not None:
            W = [w.double() for w in chain.get_weights()]
            chain.set_weights_(rescale(W, [s.detach().to(W[0]) for s in rescaling]))
            n = 0 if batch is None else batch[0].shape[0]
            res = TeleportResult(n, n, "applied", magnitude=tuple(float(s.detach().norm()) for s in rescaling))
        else:
            X, dZ = batch
            rows = exact_rows(chain, X32.double())
            if rows == 0:
                res = TeleportResult(X.shape[0], 0, "skipped", reason="no leading rows of the batch have full rank")
                return self._record(TeleportRecord(step, name, res))
            task = ChainTask(chain, X32, dZ.to(torch.float32).T[None], rows)
            T, magnitude = proposal.direction(weights, task, task.teleport_data(step))
            mags = [float(torch.as_tensor(m).reshape(-1)[0]) for m in magnitude]
            res = teleport_chain_(chain, X, [t[0] for t in T], mags)
        drift = math.nan
        if before is not None:
            after = forward([w.float() for w in chain.get_weights()], X32, chain.act, chain.bias)
            drift = float((after - before).abs().max() / before.abs().max().clamp_min(torch.finfo(torch.float32).tiny))
        if self.sampler is not None and not math.isnan(loss_before):
            with torch.no_grad():
                res = replace(res, loss_before=loss_before, loss_after=float(self.sampler()))
        return self._record(TeleportRecord(step, name, res, drift))

    def _record(self, rec: TeleportRecord) -> TeleportRecord:
        res = rec.result
        kind = res.outcome if not (res.applied and res.exact_samples < res.n_samples) else "applied on a sub-batch"
        self.counts[kind] += 1
        self.history.append(rec)
        if kind != "applied" and not self._warned:
            self._warned = True
            warnings.warn(f"LearnedOptimizer: a teleport of chain {rec.chain} at step {rec.step} was {kind}: "
                          f"{res.reason}. Warned once; `optimizer.teleport_counts` counts every outcome and "
                          "`optimizer.teleports` holds the records", TeleportWarning, stacklevel=6)
        return rec

    def remove(self) -> None:
        for cap in self.captures.values():
            cap.remove()
