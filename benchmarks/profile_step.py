"""Where the time of meta-training goes: one training window (unroll steps, meta-loss, meta-backward, Adam) and
one evaluation step, split into m1, m2, the group action, the task's loss and gradient, the meta-backward, and
the rest. Components are timed by wrapping the functions that implement them (CPU ops are synchronous; on CUDA
every wrapper synchronizes first), so the split adds a little overhead of its own.

`--device cuda` (or cuda:N) runs it on a GPU; that path is untested (no GPU was lent).

    python benchmarks/profile_step.py [--method lstm-update-tele | --config FILE] [--batches 32 256] [--windows 3] [--device cpu]
"""
from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from metatele import config, train
from metatele.learned import nets
from metatele.options import Parser, device_arg
from metatele.outer.trainer import train_batch
from metatele.methods import teleports
from metatele.step import rollout
from metatele.tasks import RegressionFamily
from metatele.tasks.regression import RegressionTasks
from metatele.tasks.seeds import train_seeds

PARTS = ("m1", "m2", "group action", "task loss+grad", "meta-backward")


@contextmanager
def timed(device: str) -> Iterator[dict[str, float]]:
    """Wrap the component functions; yields the dict of seconds per component (filled while the block runs)."""
    acc: dict[str, float] = defaultdict(float)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    patches: list[tuple[Any, str, Callable]] = []

    def wrap(owner: Any, attr: str, part: str) -> None:
        fn = getattr(owner, attr)

        def inner(*a: Any, **k: Any) -> Any:
            sync()
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                sync()
                acc[part] += time.perf_counter() - t

        patches.append((owner, attr, fn))
        setattr(owner, attr, inner)

    wrap(nets.UpdateNet, "forward", "m1")
    wrap(nets.TeleNet, "forward", "m2")
    wrap(teleports.LieTeleport, "apply", "group action")
    wrap(RegressionTasks, "loss_and_grad", "task loss+grad")
    wrap(RegressionTasks, "loss", "task loss+grad")
    wrap(torch.Tensor, "backward", "meta-backward")
    try:
        yield acc
    finally:
        for owner, attr, fn in reversed(patches):
            setattr(owner, attr, fn)


def profile(path: str | None, method: str, B: int, windows: int, device: str, overrides: list[str]
            ) -> tuple[dict, dict]:
    """(training-window split, evaluation-step split) in seconds, for the config at `path` (or the defaults of
    `method`) at batch B with fixed-length trajectories."""
    kw = {} if path else {"method": method}
    cfg = config.load(path, overrides, batch=B, trajectories=B, steps=10 * windows, min_steps=0, unroll=10,
                      eval_every=0, ckpt_every=0, **kw)
    run = train.build(cfg, device)
    task = RegressionFamily(tuple(cfg.keys.widths), cfg.keys.n).sample(train_seeds(0, 0, B), device=device)
    train_batch(run.model, run.opt, task, config.load(**{**config.to_dict(cfg), "steps": 10}).trainer)  # warm-up
    out = {}
    with timed(device) as acc:
        t = time.perf_counter()
        train_batch(run.model, run.opt, task, cfg.trainer)
        total = time.perf_counter() - t
    out["train"] = {"total": total / windows, **{k: v / windows for k, v in acc.items()}}
    rollout(run.model, task, 2)
    with timed(device) as acc, torch.no_grad():
        t = time.perf_counter()
        rollout(run.model, task, 10)
        total = time.perf_counter() - t
    out["eval"] = {"total": total / 10, **{k: v / 10 for k, v in acc.items()}}
    return out["train"], out["eval"]


def main() -> None:
    p = Parser(prog="profile_step.py", description=__doc__.splitlines()[0])
    p.add_argument("--method", default="lstm-update-tele", help="its default config (ignored with --config)")
    p.add_argument("--config", help="TOML config to profile (e.g. experiments/pretrained-v1/lstm-update-tele.toml)")
    p.add_argument("--batches", type=int, nargs="+", default=[32, 256])
    p.add_argument("--windows", type=int, default=3)
    p.add_argument("--device", type=device_arg, default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--set", action="append", default=[], help="config override key=value")
    a = p.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {a.config or a.method}, device {a.device}")
    for B in a.batches:
        tr, ev = profile(a.config, a.method, B, a.windows, a.device, a.set)
        for name, d in (("training window (10 steps)", tr), ("evaluation step", ev)):
            rest = d["total"] - sum(d.get(k, 0.0) for k in PARTS)
            cells = "  ".join(f"{k} {1e3 * d.get(k, 0.0):7.1f} ms ({100 * d.get(k, 0.0) / d['total']:4.1f}%)" for k in PARTS)
            print(f"B={B:<4} {name:27s} total {1e3 * d['total']:8.1f} ms  {cells}  rest {1e3 * rest:6.1f} ms "
                  f"({100 * rest / d['total']:4.1f}%)")


if __name__ == "__main__":
    main()
