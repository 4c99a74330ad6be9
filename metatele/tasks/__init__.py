"""Task families behind one protocol (`base`): the paper's regression family and a classification family
on real data. `sample(seeds, widths, n)` is a shortcut for the paper's regression family."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from metatele.tasks.base import Batch, Symmetry, TaskBatch, TaskFamily, TeleportData
from metatele.tasks.classification import PAPER_MNIST_WIDTHS, ClassificationFamily, ClassificationTasks
from metatele.tasks.mixture import MixtureFamily
from metatele.tasks.mlp import LeakyReLU
from metatele.tasks.regression import LAWS, PAPER_LAW, PAPER_N, PAPER_WIDTHS, Law, RegressionFamily, RegressionTasks

__all__ = ["Batch", "Symmetry", "TaskBatch", "TaskFamily", "TeleportData", "LeakyReLU", "Law", "LAWS", "PAPER_LAW",
           "PAPER_N", "PAPER_WIDTHS", "PAPER_MNIST_WIDTHS", "RegressionFamily", "RegressionTasks",
           "ClassificationFamily", "ClassificationTasks", "MixtureFamily", "family_from_dict", "sample"]


def sample(seeds: Sequence[int] | int, widths: Sequence[int] = PAPER_WIDTHS, n: int = PAPER_N,
           dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> RegressionTasks:
    """Tasks of the paper's regression family (U[0, 1) law) for the given seeds."""
    return RegressionFamily(tuple(widths), n).sample(seeds, dtype=dtype, device=device)


def family_from_dict(d: dict[str, Any]) -> RegressionFamily | ClassificationFamily | MixtureFamily:
    """Rebuild a family from `to_dict()` output; raises ValueError/TypeError/KeyError on a bad description."""
    d = dict(d)
    name = d.pop("name")
    act = LeakyReLU(float(d.pop("slope", 0.1)))
    if name == "regression":
        return RegressionFamily(tuple(d["widths"]), int(d["n"]), Law(**d.get("law", {})), act)
    if name == "classification":
        return ClassificationFamily(str(d["dataset"]), tuple(d["widths"]), int(d["batch_size"]),
                                    int(d["teleport_batch"]), act)
    if name == "mixture":
        return MixtureFamily(tuple(d["width_range"]), tuple(d["depth_range"]), tuple(d["laws"]), int(d["max_n"]), act)
    raise ValueError(f"unknown task family {name!r}")
