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

    update: m1, an LSTM over the flattened gradients that gives the local update;
    teleport: m2, one LSTM per hidden layer that gives the group element g = I + T;
    step_size: m2 also gives a GD step size, and the update is that plain GD step (LSTM(lr,tele)).
    """

    update: bool
    teleport: bool
    step_size: bool = False


LEARNED: dict[str, LearnedRecipe] = {  # in report order
    "lstm-lr-tele": LearnedRecipe(update=False, teleport=True, step_size=True),
    "lstm-update": LearnedRecipe(update=True, teleport=False),
    "lstm-update-tele": LearnedRecipe(update=True, teleport=True),
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
