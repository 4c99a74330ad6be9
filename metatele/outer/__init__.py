"""Meta-training (the outer loop), on its own settings: `settings.TrainerSettings`, the truncated-BPTT trainer
(`trainer`), its gradient-free alternative PES (`pes`), data-parallel training under torchrun (`distributed`), the progress log (`log`) and the held-out
evaluation (`heldout`). Nothing here knows the application config; `metatele.train` wires it together."""
from __future__ import annotations

from metatele.outer.settings import TrainerSettings

__all__ = ["TrainerSettings"]
