"""The one reporting layer shared by evaluation, the studies and repdyn: number and confidence-interval
formats for Markdown (`format`), the TensorBoard writer (`tensorboard`) and figures (`plotting`). Rows go to
disk through `metatele.io` (CSV with empty cells for undefined statistics, result sets written all or none)."""
from __future__ import annotations

from metatele.reporting.format import UNDEFINED, ci, fmt, markdown_table

__all__ = ["UNDEFINED", "ci", "fmt", "markdown_table"]
