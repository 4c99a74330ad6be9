"""The one TensorBoard writer: a run is a list of scalar points, optionally with hyper-parameters (for the
HPARAMS tab) and a custom-scalars layout. Non-finite values are left out (NaN never reaches the disk) and
counted."""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

__all__ = ["Point", "write_run"]

QUEUE = 1 << 16  # events the writer's thread may lag behind by


class Point(NamedTuple):
    """One scalar: `value` of `tag` at `step`; walltime in seconds since the epoch (None: now)."""

    tag: str
    value: float
    step: int
    walltime: float | None = None


def write_run(logdir: Path, points: Iterable[Point], *, hparams: tuple[Mapping[str, Any], Mapping[str, float]]
              | None = None, layout: Mapping[str, Any] | None = None) -> int:
    """Write one TensorBoard run in `logdir`: the finite points; `hparams` = (hyper-parameters, metrics; a
    value that is not a number, string or bool is written as its str; the metrics' values must also be among
    the points to show); `layout` = a custom-scalars layout. Returns how many points were left out because
    their value was NaN or ±inf."""
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams as hparams_summaries

    skipped = 0
    # The writer's thread serializes and writes the events; a short queue (its default holds 10) makes this thread
    # wait for it at every point (1.7× slower on a busy machine). The file is the same.
    with SummaryWriter(str(logdir), max_queue=QUEUE) as w:
        for p in points:
            if math.isfinite(p.value):
                w.add_scalar(p.tag, p.value, p.step, walltime=p.walltime)
            else:
                skipped += 1
        if hparams is not None:
            hp = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in hparams[0].items()}
            for summary in hparams_summaries(hp, dict(hparams[1])):
                w.file_writer.add_summary(summary)
        if layout:
            w.add_custom_scalars(dict(layout))
    return skipped
