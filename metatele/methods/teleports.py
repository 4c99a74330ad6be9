"""Teleports (what to apply after the update) and non-learned teleport policies (when to teleport).

`LieTeleport` applies g = I + T with T given (a learned group element); `AscentTeleport` searches the
level set by gradient ascent on ‖∇L‖². Each does what the task's symmetry allows (`TaskBatch.symmetry`):
- GL: the exact action on the task's teleport data for the step, with the task's activation. A task of the batch
  where it is impossible at this step (a diverged, non-finite or rank-deficient layer input) is left as it is;
- RESCALE: the positive diagonal subgroup g_m = diag(e^{s_m}), exact for any data: `LieTeleport` takes the
  diagonal of T_m, `AscentTeleport` ascends ‖∇L‖² over s on the step's data;
- NONE: no teleport (warned).
Where the teleport data has fewer samples than a layer's input width, the nearest solution is taken
(`nearest=True` in `metatele.teleport.action`), so that the weights off the data's span are not erased.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

import torch

from metatele.methods.base import Proposal
from metatele.tasks.base import Symmetry, TaskBatch, TeleportData, has_bias
from metatele.teleport.action import grad_norm_sq, normalize, rescale, teleport
from metatele.teleport.ascent import DEFAULT_STEP, ascend_group, gradient_ascent_teleport

__all__ = ["Schedule", "LieTeleport", "AscentTeleport", "ascent_every", "decay_teleport", "rescale_ascent",
           "no_teleport"]


def no_teleport(weights: list[torch.Tensor], what: str) -> list[torch.Tensor]:
    """The weights unchanged, with a warning: the task supports no symmetry (`Symmetry.NONE`)."""
    warnings.warn(f"{what}: the task supports no symmetry (Symmetry.NONE), so the teleport is skipped",
                  RuntimeWarning, stacklevel=3)
    return list(weights)


def rescale_ascent(weights: list[torch.Tensor], task: TaskBatch, step: int, steps: int = 1,
                   lr: float | None = None, size: float = 1.0) -> list[torch.Tensor]:
    """Parameters s (one (B, k_m) tensor per hidden layer) of the positive diagonal subgroup reached by `steps`
    gradient-ascent steps on ‖∇L(diag(e^s)·W)‖² over the data of inner step `step`, from s = 0 (normalized steps
    of length `size` if lr is None, as in `metatele.teleport.ascent.ascend_group`). Detached."""
    data = task.data(step)

    def steepness(W: list[torch.Tensor]) -> torch.Tensor:
        return grad_norm_sq(task.loss_and_grad(W, data, create_graph=True)[1])

    s, _ = ascend_group(weights, data.X, steepness, act=task.activation, steps=steps, lr=lr, step=size, group="diag")
    return s


@dataclass(frozen=True)
class Schedule:
    """The 0-based steps that teleport: every `every`-th step below `until` (0, every, 2·every, …; every=0: none),
    and the steps in `at`. Shared by the teleport policies here and `metatele.teleport.sequential.Teleporter`."""

    every: int = 0
    until: int = 0
    at: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        if self.every < 0 or self.until < 0 or any(t < 0 for t in self.at):
            raise ValueError(f"a teleport schedule needs non-negative steps, got every={self.every}, "
                             f"until={self.until}, at={sorted(self.at)}")

    def __contains__(self, t: int) -> bool:
        return t in self.at or (self.every > 0 and t % self.every == 0 and t < self.until)

    @classmethod
    def of(cls, at_steps: Iterable[int] = (), at_epochs: Iterable[int] = (), steps_per_epoch: int | None = None,
           per_epoch: int = 1) -> Schedule:
        """At the given steps, and at steps e·steps_per_epoch + j for e in at_epochs and j < per_epoch."""
        epochs = list(at_epochs)
        if epochs and not steps_per_epoch:
            raise ValueError("a schedule at_epochs needs steps_per_epoch")
        return cls(at=frozenset(at_steps) | {e * steps_per_epoch + j for e in epochs for j in range(per_epoch)})


@dataclass
class LieTeleport:
    """g_m = I + T_m with T_m (B, k_m, k_m) normalized to `magnitude[m]` (a float or (B,)); exact or the
    paper's first-order action."""

    T: list[torch.Tensor]
    magnitude: list[float | torch.Tensor]
    exact: bool = True

    def direction(self, weights: list[torch.Tensor], task: TaskBatch, data: TeleportData
                  ) -> tuple[list[torch.Tensor], list[float | torch.Tensor]]:
        """T_m (B, k_m, k_m) and the magnitudes to scale them to (they do not depend on the data)."""
        return self.T, self.magnitude

    def apply(self, weights: list[torch.Tensor], task: TaskBatch, step: int) -> list[torch.Tensor]:
        if task.symmetry is Symmetry.RESCALE:  # the diagonal of each normalized T_m
            return rescale(weights, [normalize(t, e).diagonal(dim1=-2, dim2=-1) for t, e in zip(self.T, self.magnitude)])
        if task.symmetry is Symmetry.NONE:
            return no_teleport(weights, "LieTeleport")
        data = task.teleport_data(step)
        return teleport(weights, data.batch.X, self.T, self.magnitude, act=task.activation, exact=self.exact,
                        X_pinv=data.X_pinv, skip_invalid=True, nearest=True, bias=has_bias(task))


@dataclass
class AscentTeleport:
    """`steps` gradient-ascent steps on ‖∇L(g·W)‖² (normalized steps if lr is None)."""

    steps: int = 10
    lr: float | None = None

    def apply(self, weights: list[torch.Tensor], task: TaskBatch, step: int) -> list[torch.Tensor]:
        if task.symmetry is Symmetry.RESCALE:
            s = rescale_ascent(weights, task, step, self.steps, self.lr, size=DEFAULT_STEP)
            return [w.detach() for w in rescale([w.detach() for w in weights], s)]
        if task.symmetry is Symmetry.NONE:
            return no_teleport(weights, "AscentTeleport")
        return gradient_ascent_teleport(weights, task, task.teleport_data(step), self.steps, self.lr,
                                        skip_invalid=True, nearest=True)


@dataclass
class ascent_every:
    """Teleport by gradient ascent after the update at steps 0, every, 2·every, … (< until)."""

    every: int = 10
    until: int = 50
    ascent_steps: int = 10
    lr: float | None = None
    schedule: Schedule = field(init=False)

    def __post_init__(self) -> None:
        self.schedule = Schedule(self.every, self.until)

    def init(self, weights: Sequence[torch.Tensor]) -> int:
        return 0

    def propose(self, prop: Proposal, grads: Sequence[torch.Tensor], t: int, *,
                weights: Sequence[torch.Tensor]) -> tuple[Proposal, int]:
        if t in self.schedule:
            prop = replace(prop, teleport=AscentTeleport(self.ascent_steps, self.lr))
        return prop, t + 1


@dataclass
class decay_teleport:
    """Scale the proposed teleport's magnitude by exp(−t/tau) at step t: teleports happen mostly early, and the
    total displacement along the orbit stays bounded (≈ tau × magnitude), so that repeated teleports cannot drift
    the weights without bound towards ever sharper, unstable points. Teleports without a magnitude pass as they are."""

    tau: float

    def init(self, weights: Sequence[torch.Tensor]) -> int:
        return 0

    def propose(self, prop: Proposal, grads: Sequence[torch.Tensor], t: int, *,
                weights: Sequence[torch.Tensor]) -> tuple[Proposal, int]:
        tele = prop.teleport
        if tele is not None and hasattr(tele, "magnitude"):
            f = math.exp(-t / self.tau)
            prop = replace(prop, teleport=replace(tele, magnitude=[m * f for m in tele.magnitude]))
        return prop, t + 1
