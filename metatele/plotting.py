"""matplotlib with the non-interactive Agg backend, imported only when a figure is drawn."""
from __future__ import annotations

from types import ModuleType

__all__ = ["pyplot"]


def pyplot() -> ModuleType:
    """matplotlib.pyplot on the Agg backend (heavy: import it only where a figure is drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
