"""matplotlib with the non-interactive Agg backend, imported only when a figure is drawn, and figures
rendered to PNG bytes (written to disk with the rest of a result set by `metatele.io.write_files`)."""
from __future__ import annotations

import io
from types import ModuleType
from typing import Any

__all__ = ["pyplot", "png_bytes"]


def pyplot() -> ModuleType:
    """matplotlib.pyplot on the Agg backend (heavy: import it only where a figure is drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig: Any, dpi: int = 110) -> bytes:
    """Render a matplotlib figure to PNG and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    pyplot().close(fig)
    return buf.getvalue()
