"""Evaluation: statistics (`stats`), the methods to compare and the one `evaluate` with its recorders
(`compare`), and the compare report (`report`, written through `metatele.reporting` and `metatele.io`). The
held-out evaluation during meta-training is `metatele.outer.heldout`."""
from __future__ import annotations
