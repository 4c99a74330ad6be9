"""Methods = update rule ∘ teleport policy, as composable transforms (`base`, `rules`, `teleports`),
baselines named in one registry (`registry`; learned methods: `metatele.learned.LEARNED`)."""
from __future__ import annotations

from metatele.methods.base import (DEFAULT_HORIZON, Composed, Horizon, Method, Proposal, Teleport, Transform, add_update,
                                   chain, identity, set_horizon)
from metatele.methods.registry import BASELINES, PAPER_GD_LR, baseline
from metatele.methods.rules import AdamState, adam, momentum, sgd
from metatele.methods.teleports import AscentTeleport, LieTeleport, ascent_every

__all__ = ["Composed", "Method", "Proposal", "Teleport", "Transform", "add_update", "chain", "identity",
           "DEFAULT_HORIZON", "Horizon", "set_horizon",
           "BASELINES", "PAPER_GD_LR", "baseline", "AdamState", "adam", "momentum",
           "sgd", "AscentTeleport", "LieTeleport", "ascent_every"]
