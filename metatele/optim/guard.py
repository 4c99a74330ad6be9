"""Divergence guard for `LearnedOptimizer`: a step whose loss or gradient is non-finite, or whose loss is above
`max_loss_ratio` × the running minimum of the accepted losses, is skipped and the parameters roll back to the
last weights whose loss was accepted. It warns once per optimizer and counts every skipped step."""
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch

__all__ = ["DivergenceWarning", "DivergenceGuard", "divergence_reason"]


class DivergenceWarning(RuntimeWarning):
    """A learned optimizer skipped a step and rolled back (non-finite or exploding loss or gradient)."""


def divergence_reason(loss: float | None, grads_finite: bool, running_min: float, max_loss_ratio: float | None
                      ) -> str:
    """The one divergence criterion (this guard's and `metatele.learned.apply.optimize_`'s): why a step with this loss
    (None: unknown) counts as diverged, '' if it does not. running_min: the lowest positive accepted loss (inf: none)."""
    if loss is not None and not math.isfinite(loss):
        return f"the loss is {loss}"
    if not grads_finite:
        return "a gradient holds NaN or inf"
    if (loss is not None and max_loss_ratio is not None and 0 < running_min < math.inf
            and loss > max_loss_ratio * running_min):
        return f"the loss {loss:.4g} is above {max_loss_ratio:g} × its running minimum {running_min:.4g}"
    return ""


class DivergenceGuard:
    """Decides whether a step may update, and remembers the last accepted weights.

    max_loss_ratio: a loss above this × the running minimum of accepted (positive) losses counts as divergence
    (None: only non-finite values do). The check needs the loss, so it applies when `step` gets a closure;
    without one only the gradients are checked.
    """

    def __init__(self, max_loss_ratio: float | None = 1e3) -> None:
        if max_loss_ratio is not None and not (isinstance(max_loss_ratio, (int, float)) and
                                               math.isfinite(max_loss_ratio) and max_loss_ratio > 1):
            raise ValueError(f"max_loss_ratio must be a finite number > 1 or None, got {max_loss_ratio!r}")
        self.max_loss_ratio = max_loss_ratio
        self.running_min = math.inf
        self.skipped = 0
        self.last_reason = ""
        self._warned = False

    def check(self, loss: float | None, grads: Sequence[torch.Tensor]) -> str:
        """'' if the step may update, else why not (and the step is counted as skipped)."""
        finite = not grads or bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())
        reason = divergence_reason(loss, finite, self.running_min, self.max_loss_ratio)
        if reason:
            self.skipped += 1
            self.last_reason = reason
            if not self._warned:
                self._warned = True
                warnings.warn(f"LearnedOptimizer skipped a step and rolled back to the last good weights: {reason}. "
                              "Warned once; `optimizer.skipped_steps` counts them (a smaller lr may help)",
                              DivergenceWarning, stacklevel=5)
        elif loss is not None and loss > 0:
            self.running_min = min(self.running_min, loss)
        return reason

    def state_dict(self) -> dict[str, float | int | bool | str]:
        return {"running_min": self.running_min, "skipped": self.skipped, "warned": self._warned,
                "last_reason": self.last_reason}

    def load_state_dict(self, d: dict[str, float | int | bool | str]) -> None:
        try:
            running_min, skipped = float(d["running_min"]), int(d["skipped"])
            warned, last = bool(d["warned"]), str(d["last_reason"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"the optimizer state's guard entry is invalid ({e})") from None
        self.running_min, self.skipped, self._warned, self.last_reason = running_min, skipped, warned, last
