"""metatele: learning to optimize with parameter-space symmetry."""
from __future__ import annotations

__version__ = "0.1.0"

from metatele.checkpoints import load_meta_optimizer, load_pretrained  # noqa: E402

__all__ = ["__version__", "load_meta_optimizer", "load_pretrained"]
