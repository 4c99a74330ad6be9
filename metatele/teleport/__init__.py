"""Symmetry teleportation: the exact group action and its variants (`action`) and gradient-ascent
teleport (`ascent`), batched over tasks; `Teleporter` teleports a user's `nn.Sequential` inside a torch training
loop (`sequential`)."""
from __future__ import annotations

from typing import Any

from metatele.teleport.action import grad_norm_sq, group_action, normalize, pinv_full_rank, rescale, teleport
from metatele.teleport.ascent import gradient_ascent_teleport

__all__ = ["grad_norm_sq", "group_action", "normalize", "pinv_full_rank", "rescale", "teleport",
           "gradient_ascent_teleport", "Teleporter"]


def __getattr__(name: str) -> Any:
    """`Teleporter`, imported on first use (PEP 562): it needs `metatele.nn`, which needs `metatele.tasks`,
    whose regression family still takes `pinv_full_rank` from `teleport.action` (and so runs this file)."""
    if name == "Teleporter":
        from metatele.teleport.sequential import Teleporter

        return Teleporter
    raise AttributeError(f"module 'metatele.teleport' has no attribute {name!r}")
