"""matplotlib with the non-interactive Agg backend, imported only when a figure is drawn, and an atomic PNG writer."""
from __future__ import annotations

import io
from pathlib import Path
from types import ModuleType
from typing import Any

from metatele.checkpoints import atomic_write

__all__ = ["pyplot", "save_png"]


def pyplot() -> ModuleType:
    """matplotlib.pyplot on the Agg backend (heavy: import it only where a figure is drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig: Any, path: Path, dpi: int = 110) -> None:
    """Render a matplotlib figure to PNG, write it atomically to `path` and close the figure."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    pyplot().close(fig)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(buf.getvalue()))
