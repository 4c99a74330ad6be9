"""Every method name, in one place: the CLI, evaluation and checkpoints look names up here.

Baselines map to compositions of transforms. Learned methods map to a `LearnedRecipe`, the parts a
`metatele.learned.MetaOptimizer` builds (its meta-parameters), composed the same way.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from metatele.methods.base import Composed, chain
from metatele.methods.rules import adam, momentum, sgd
from metatele.methods.teleports import ascent_every

__all__ = ["PAPER_GD_LR", "BASELINES", "LearnedRecipe", "LEARNED", "baseline"]

PAPER_GD_LR = 3e-4


@dataclass(frozen=True)
class LearnedRecipe:
    """What a learned method is made of.

    update (m1): "lstm", an LSTM over the flattened gradients of one network size (the paper); or
      "coordinatewise", one LSTM shared by every weight, for any size; or None.
    teleport (m2): "lstm", one LSTM per hidden layer reading that layer pair's flattened gradients (the paper);
      "steepest" or "bilinear", size-agnostic (see metatele.learned.coordinatewise); or None.
    step_size: the m2 LSTMs also give a GD step size, and the update is that plain GD step (LSTM(lr,tele)).
    """

    update: str | None
    teleport: str | None
    step_size: bool = False

    @property
    def size_agnostic(self) -> bool:
        return self.update != "lstm" and self.teleport != "lstm"


LEARNED: dict[str, LearnedRecipe] = {  # in report order
    "lstm-lr-tele": LearnedRecipe(update=None, teleport="lstm", step_size=True),
    "lstm-update": LearnedRecipe(update="lstm", teleport=None),
    "lstm-update-tele": LearnedRecipe(update="lstm", teleport="lstm"),
    "any-update": LearnedRecipe(update="coordinatewise", teleport=None),
    "any-update-tele": LearnedRecipe(update="coordinatewise", teleport="steepest"),
    "any-update-tele-bilinear": LearnedRecipe(update="coordinatewise", teleport="bilinear"),
}

BASELINES: dict[str, Callable[..., Composed]] = {
    "gd": lambda lr=PAPER_GD_LR: Composed("gd", sgd(lr), {"lr": lr}),
    "momentum": lambda lr=1e-4, mu=0.9: Composed("momentum", momentum(lr, mu), {"lr": lr, "momentum": mu}),
    "adam": lambda lr=1e-3: Composed("adam", adam(lr), {"lr": lr}),
    "gd-teleport": lambda lr=PAPER_GD_LR, every=10, until=50, ascent_steps=10: Composed(
        "gd-teleport", chain(sgd(lr), ascent_every(every, until, ascent_steps)),
        {"lr": lr, "teleport_every": every, "teleport_until": until, "ascent_steps": ascent_steps}),
}


def baseline(kind: str, name: str | None = None, **hparams: Any) -> Composed:
    """A baseline method by registry name, optionally renamed (e.g. "gd-tuned" for a tuned "gd")."""
    method = BASELINES[kind](**hparams)
    if name is not None:
        method.name = name
    return method
