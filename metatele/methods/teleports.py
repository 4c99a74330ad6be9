"""Teleports (what to apply after the update) and non-learned teleport policies (when to teleport).

`LieTeleport` applies g = I + T with T given (a learned group element); `AscentTeleport` searches the
level set by gradient ascent on ‖∇L‖². Both act on the task's teleport data for the step, with the
task's activation; the task must support the exact GL action (`Symmetry.GL`). A task of the batch where the
action is impossible at this step (a diverged, non-finite or rank-deficient layer input) is left as it is.
Where the teleport data has fewer samples than a layer's input width, the nearest solution is taken
(`nearest=True` in `metatele.teleport.action`), so that the weights off the data's span are not erased.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import torch

from metatele.methods.base import Proposal
from metatele.tasks.base import has_bias
from metatele.teleport.action import teleport
from metatele.teleport.ascent import gradient_ascent_teleport

if TYPE_CHECKING:
    from metatele.tasks.base import TaskBatch, TeleportData

__all__ = ["Schedule", "LieTeleport", "AscentTeleport", "ascent_every", "decay_teleport"]


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
        data = task.teleport_data(step)
        return teleport(weights, data.batch.X, self.T, self.magnitude, act=task.activation, exact=self.exact,
                        X_pinv=data.X_pinv, skip_invalid=True, nearest=True, bias=has_bias(task))


@dataclass
class AscentTeleport:
    """`steps` gradient-ascent steps on ‖∇L(g·W)‖² (normalized steps if lr is None)."""

    steps: int = 10
    lr: float | None = None

    def apply(self, weights: list[torch.Tensor], task: TaskBatch, step: int) -> list[torch.Tensor]:
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
