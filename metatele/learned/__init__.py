"""Learned methods (`nets`, `meta_optimizer`) and the truncated-BPTT meta-trainer (`trainer`)."""
from __future__ import annotations

from metatele.learned.meta_optimizer import LearnedTeleport, LearnedUpdate, MetaOptimizer, MetaOptSpec

__all__ = ["LearnedTeleport", "LearnedUpdate", "MetaOptimizer", "MetaOptSpec"]
