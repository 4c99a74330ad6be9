"""The baseline methods by name, each a composition of transforms. Learned methods have their own registry,
`metatele.learned.LEARNED` (their meta-parameters and specs live in `metatele.learned`).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from metatele.methods.base import Composed, chain
from metatele.methods.rules import adam, momentum, sgd
from metatele.methods.teleports import ascent_every

__all__ = ["PAPER_GD_LR", "BASELINES", "baseline"]

PAPER_GD_LR = 3e-4


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
