"""metatele: learning to optimize with parameter-space symmetry."""
from __future__ import annotations

from metatele._version import __version__
from metatele.checkpoints import load_model, load_pretrained

__all__ = ["__version__", "load_model", "load_pretrained"]
