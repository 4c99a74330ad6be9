"""Learned methods: the registry and the base classes (`base`), the shared nets (`nets`), the paper's LSTM
family (`lstm`) and the size-agnostic coordinatewise family (`coordinatewise`). Importing this package registers
the project's six learned methods, in report order."""
from __future__ import annotations

from metatele.learned.base import (LEARNED, LearnedEntry, LearnedSpec, MetaOptimizer, build, parameter_count,
                                   register_learned, spec_from_dict)
from metatele.learned.lstm import LSTMOptimizer, LSTMSpec
from metatele.learned.coordinatewise import CoordinatewiseOptimizer, CoordinatewiseSpec  # noqa: I001 (report order)

__all__ = ["LEARNED", "LearnedEntry", "LearnedSpec", "MetaOptimizer", "build", "parameter_count", "register_learned",
           "spec_from_dict", "LSTMOptimizer", "LSTMSpec", "CoordinatewiseOptimizer", "CoordinatewiseSpec"]
