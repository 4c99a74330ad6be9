"""Task families behind one protocol (`base`): the paper's regression family and a classification family
on real data. `sample(seeds, widths, n)` is a shortcut for the paper's regression family."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from metatele import checks
from metatele.datasets import DATASETS
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
    """Rebuild a family from `to_dict()` output (untrusted checkpoint metadata: types and ranges are checked);
    raises ValueError/TypeError/KeyError on a bad description."""
    d = dict(d)
    name = d.pop("name")
    act = LeakyReLU(checks.positive_float("slope", d.pop("slope", 0.1)))
    if name == "regression":
        return RegressionFamily(checks.widths("widths", d["widths"]), checks.integer("n", d["n"], 1, checks.MAX_SAMPLES),
                                Law(**d.get("law", {})), act)
    if name == "classification":
        return ClassificationFamily(checks.choice("dataset", d["dataset"], DATASETS), checks.widths("widths", d["widths"]),
                                    checks.integer("batch_size", d["batch_size"], 1, checks.MAX_SAMPLES),
                                    checks.integer("teleport_batch", d["teleport_batch"], 0, checks.MAX_WIDTH), act)
    if name == "mixture":
        return MixtureFamily(checks.int_pair("width_range", d["width_range"], 1, checks.MAX_WIDTH),
                             checks.int_pair("depth_range", d["depth_range"], 1, checks.MAX_LAYERS - 1),
                             checks.choices("laws", d["laws"], tuple(LAWS)),
                             checks.integer("max_n", d["max_n"], 1, checks.MAX_SAMPLES), act)
    raise ValueError(f"unknown task family {name!r}")
