"""metatele: learning to optimize with parameter-space symmetry.

`import metatele` stays light (torch is not imported until `load_model` or `load_pretrained` is first used),
so that the `metatele` program can install its Ctrl-C handler before the heavy imports (`metatele.entry`).
"""
from __future__ import annotations

from metatele._version import __version__

__all__ = ["__version__", "load_model", "load_pretrained"]


def __getattr__(name: str) -> object:
    """load_model and load_pretrained, from metatele.checkpoints on first use (PEP 562)."""
    if name in ("load_model", "load_pretrained"):
        from metatele import checkpoints  # the one lazy import of metatele's own code (see the docstring)

        return getattr(checkpoints, name)
    raise AttributeError(f"module 'metatele' has no attribute {name!r}")
