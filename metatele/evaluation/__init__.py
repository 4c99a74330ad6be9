"""Evaluation: statistics (`stats`), the methods to compare and running them (`compare`), the report
(`report`), and the held-out callback used during meta-training (`heldout`)."""
from __future__ import annotations
