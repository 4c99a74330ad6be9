"""Task families behind one protocol (`base`), registered by name (`registry`): the paper's regression family,
a classification family on real data and a mixture of shapes. `sample(seeds, widths, n)` is a shortcut for the
paper's regression family."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from metatele.tasks.base import Batch, Symmetry, TaskBatch, TaskFamily, TeleportData
from metatele.tasks.classification import PAPER_MNIST_WIDTHS, ClassificationFamily, ClassificationTasks
from metatele.tasks.mixture import MixtureFamily
from metatele.tasks.mlp import LeakyReLU
from metatele.tasks.regression import LAWS, PAPER_LAW, PAPER_N, PAPER_WIDTHS, Law, RegressionFamily, RegressionTasks
from metatele.tasks.registry import FAMILIES, family_from_config, family_from_dict, register_family

__all__ = ["Batch", "Symmetry", "TaskBatch", "TaskFamily", "TeleportData", "LeakyReLU", "Law", "LAWS", "PAPER_LAW",
           "PAPER_N", "PAPER_WIDTHS", "PAPER_MNIST_WIDTHS", "RegressionFamily", "RegressionTasks",
           "ClassificationFamily", "ClassificationTasks", "MixtureFamily", "FAMILIES", "register_family",
           "family_from_dict", "family_from_config", "sample"]


def sample(seeds: Sequence[int] | int, widths: Sequence[int] = PAPER_WIDTHS, n: int = PAPER_N,
           dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> RegressionTasks:
    """Tasks of the paper's regression family (U[0, 1) law) for the given seeds."""
    return RegressionFamily(tuple(widths), n).sample(seeds, dtype=dtype, device=device)
