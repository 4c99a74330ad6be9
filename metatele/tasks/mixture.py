"""A mixture of regression families over shapes and laws, for meta-training size-agnostic methods.

Every call to `sample` (one batch of trajectories) draws one member from its first seed: a depth in
depth_range hidden layers, each width (input, hidden and output) in width_range, a law from `laws`, and
n = min(max_n, the smallest hidden-layer input width) samples, so that the exact group action applies.
Tasks of one batch share a shape, which keeps the batch a dense (B, …) tensor.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from metatele import checks
from metatele.tasks.base import Symmetry
from metatele.tasks.mlp import LeakyReLU
from metatele.tasks.regression import LAWS, RegressionFamily, RegressionTasks

__all__ = ["MixtureFamily"]


@dataclass(frozen=True)
class MixtureFamily:
    width_range: tuple[int, int] = (8, 48)
    depth_range: tuple[int, int] = (1, 3)
    laws: tuple[str, ...] = ("paper", "normal-init")
    max_n: int = 20
    activation: LeakyReLU = field(default_factory=LeakyReLU)
    name: str = "mixture"

    def __post_init__(self) -> None:
        (lo, hi), (dlo, dhi) = self.width_range, self.depth_range
        if not 1 <= lo <= hi or not 1 <= dlo <= dhi:
            raise ValueError(f"width_range and depth_range need 1 ≤ low ≤ high, got {self.width_range}, {self.depth_range}")
        unknown = [law for law in self.laws if law not in LAWS]
        if unknown or not self.laws:
            raise ValueError(f"laws must be a non-empty subset of {', '.join(LAWS)}, got {list(self.laws)}")

    @property
    def widths(self) -> tuple[int, ...]:
        return ()  # no single shape

    @property
    def symmetry(self) -> Symmetry:
        return Symmetry.GL  # n ≤ every hidden layer's input width by construction

    def member(self, key: int) -> RegressionFamily:
        """The regression family that a batch whose first seed is `key` samples from."""
        gen = torch.Generator().manual_seed(int(key) ^ 0x5EED)
        draw = lambda lo, hi: int(torch.randint(lo, hi + 1, (), generator=gen))  # noqa: E731
        depth = draw(*self.depth_range)
        widths = tuple(draw(*self.width_range) for _ in range(depth + 2))
        law = self.laws[draw(0, len(self.laws) - 1)]
        return RegressionFamily(widths, min(self.max_n, min(widths[:-2])), LAWS[law], self.activation)

    def sample(self, seeds: Sequence[int] | int, *, dtype: torch.dtype = torch.float32,
               device: torch.device | str = "cpu") -> RegressionTasks:
        seeds = [seeds] if isinstance(seeds, int) else [int(s) for s in seeds]
        return self.member(seeds[0]).sample(seeds, dtype=dtype, device=device)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "width_range": list(self.width_range), "depth_range": list(self.depth_range),
                "laws": list(self.laws), "max_n": self.max_n, "slope": self.activation.slope}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MixtureFamily:
        """The family `to_dict()` described (untrusted: types and ranges are checked)."""
        return cls(checks.int_pair("width_range", d["width_range"], 1, checks.MAX_WIDTH),
                   checks.int_pair("depth_range", d["depth_range"], 1, checks.MAX_LAYERS - 1),
                   checks.choices("laws", d["laws"], tuple(LAWS)),
                   checks.integer("max_n", d["max_n"], 1, checks.MAX_SAMPLES),
                   LeakyReLU(checks.positive_float("slope", d.get("slope", 0.1))))

    @classmethod
    def from_config(cls, keys: Mapping[str, Any]) -> MixtureFamily:
        """From the config keys width_range, depth_range, laws, n (the most samples per task) and slope."""
        return cls.from_dict({"width_range": keys["width_range"], "depth_range": keys["depth_range"],
                              "laws": keys["laws"], "max_n": keys["n"], "slope": keys["slope"]})
