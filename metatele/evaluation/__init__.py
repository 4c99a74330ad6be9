"""Evaluation: statistics (`stats`), the methods to compare and the one `evaluate` with its recorders
(`compare`), the compare report (`report`, written through `metatele.reporting` and `metatele.io`), and the
held-out callback used during meta-training (`heldout`)."""
from __future__ import annotations
