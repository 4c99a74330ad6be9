"""Evaluation: statistics (`stats`), the methods to compare and running them (`compare`), and the report
(`report`). The held-out evaluation during meta-training is `metatele.outer.heldout`."""
from __future__ import annotations
