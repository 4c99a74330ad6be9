"""Progress of a meta-training run, for a person: a tqdm bar and TensorBoard scalars (`train/*`, `heldout/*`)."""
from __future__ import annotations

import math
import time
from pathlib import Path
from types import TracebackType

from tqdm import tqdm

__all__ = ["TrainLog"]

TAGS = {"meta_loss": "train/meta_loss", "grad_norm": "train/meta_grad_norm",
        "teleport_magnitude": "train/teleport_magnitude", "lr": "train/learned_lr", "frozen": "train/frozen_tasks"}


class TrainLog:
    """Context manager: `window(fraction)` after every meta-update (so that the bar moves within a batch, which can
    take minutes), `batch(...)` after every batch, `heldout(...)` after every held-out evaluation."""

    def __init__(self, logdir: str | Path | None, n_batches: int, done: int, progress: bool) -> None:
        self.logdir, self.n_batches, self.done, self.progress = logdir, n_batches, done, progress
        self.batches = done

    def __enter__(self) -> TrainLog:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(self.logdir)) if self.logdir is not None else None
        self.bar = tqdm(total=self.n_batches, initial=self.done, disable=not self.progress, dynamic_ncols=True,
                        mininterval=0, miniters=0,  # every window redraws (a window takes a while)
                        bar_format="{l_bar}{bar}| {n:.2f}/{total} batches [{elapsed}<{remaining}{postfix}]")
        self.t0, self.traj_steps = time.perf_counter(), 0
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.close()

    def batch(self, stats: dict[str, float], traj_steps: int, trajectories_seen: int, skipped_windows: int) -> None:
        self.traj_steps += traj_steps
        rate = self.traj_steps / (time.perf_counter() - self.t0)
        self.batches += 1
        self.bar.update(self.batches - self.bar.n)  # whole batches (a batch may end early, abandoning windows)
        self.bar.set_postfix(meta_loss=f"{stats.get('meta_loss', math.nan):.4g}", traj_steps_s=f"{rate:.0f}",
                             skipped=skipped_windows)
        if self.writer is not None:
            for k, tag in TAGS.items():
                if k in stats:
                    self.writer.add_scalar(tag, stats[k], trajectories_seen)
            self.writer.add_scalar("train/skipped_windows", skipped_windows, trajectories_seen)
            self.writer.add_scalar("train/traj_steps_per_s", rate, trajectories_seen)

    def window(self, fraction: float) -> None:
        """One window done: `fraction` of the current batch."""
        self.bar.update(min(fraction, self.batches + 1 - self.bar.n))

    def heldout(self, values: dict[str, float], trajectories_seen: int) -> None:
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(f"heldout/{k}", v, trajectories_seen)
