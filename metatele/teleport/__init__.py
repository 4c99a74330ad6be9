"""Symmetry teleportation: the exact group action and its variants (`action`) and gradient-ascent
teleport (`ascent`), batched over tasks; `Teleporter` teleports a user's `nn.Sequential` inside a torch training
loop (`sequential`)."""
from __future__ import annotations

from metatele.teleport.action import grad_norm_sq, group_action, normalize, pinv_full_rank, rescale, teleport
from metatele.teleport.ascent import gradient_ascent_teleport
from metatele.teleport.sequential import Teleporter

__all__ = ["grad_norm_sq", "group_action", "normalize", "pinv_full_rank", "rescale", "teleport",
           "gradient_ascent_teleport", "Teleporter"]
