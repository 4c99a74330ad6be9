"""Methods = update rule ∘ teleport policy, as composable transforms (`base`, `rules`, `teleports`),
named in one registry (`registry`)."""
from __future__ import annotations

from metatele.methods.base import Composed, Method, Proposal, Teleport, Transform, add_update, chain, identity
from metatele.methods.registry import BASELINES, LEARNED, PAPER_GD_LR, LearnedRecipe, baseline
from metatele.methods.rules import AdamState, adam, momentum, sgd
from metatele.methods.teleports import AscentTeleport, LieTeleport, ascent_every

__all__ = ["Composed", "Method", "Proposal", "Teleport", "Transform", "add_update", "chain", "identity",
           "BASELINES", "LEARNED", "PAPER_GD_LR", "LearnedRecipe", "baseline", "AdamState", "adam", "momentum",
           "sgd", "AscentTeleport", "LieTeleport", "ascent_every"]
