"""Symmetry teleportation: the exact group action and its variants (`action`) and gradient-ascent
teleport (`ascent`), batched over tasks; `Teleporter` (`sequential`) for a user's own training loop."""
from __future__ import annotations

from metatele.teleport.action import grad_norm_sq, group_action, normalize, pinv_full_rank, rescale, teleport
from metatele.teleport.ascent import gradient_ascent_teleport

__all__ = ["grad_norm_sq", "group_action", "normalize", "pinv_full_rank", "rescale", "teleport",
           "gradient_ascent_teleport", "Teleporter"]


def __getattr__(name: str) -> object:
    """Teleporter, from `metatele.teleport.sequential` on first use (PEP 562): that module builds on the adapter
    (`metatele.nn`) and the task families, which themselves import `metatele.teleport.action`."""
    if name == "Teleporter":
        from metatele.teleport.sequential import Teleporter

        return Teleporter
    raise AttributeError(f"module 'metatele.teleport' has no attribute {name!r}")
