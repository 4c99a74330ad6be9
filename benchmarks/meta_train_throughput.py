"""Meta-training throughput of the shipped learned methods (their configs in experiments/pretrained; 20×20 tasks,
unroll 10, fixed-length trajectories).

Prints traj-steps/s for each method at B = 1, 16, 64, 256 (full meta-update per window), the achieved GFLOP/s
(counted from the LSTM/linear matmuls of the meta-optimizer, forward + backward = ×3) and the share of an sgemm
peak measured on this machine in the same run.

`--device cuda` (or cuda:N) runs it on a GPU; that path is untested (no GPU was lent).

    python benchmarks/meta_train_throughput.py [--methods lstm-update-tele lstm-update lstm-lr-tele]
        [--batches 1 16 64 256] [--windows 3] [--set key=value] [--device cpu]
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from metatele import config, train
from metatele.options import Parser, device_arg
from metatele.outer.trainer import train_batch
from metatele.tasks import RegressionFamily
from metatele.tasks.seeds import train_seeds

SHIPPED = {m: Path(__file__).resolve().parents[1] / "experiments" / "pretrained" / f"{m}.toml"
           for m in ("lstm-update-tele", "lstm-update", "lstm-lr-tele")}  # the configs of the shipped checkpoints


def shipped(method: str, overrides: list[str], **kw: Any) -> config.TrainConfig:
    """The shipped config of `method` (its sizes and levers) with fixed-length trajectories and `kw`."""
    return config.load(SHIPPED[method], overrides, method=method, min_steps=0, eval_every=0, ckpt_every=0, **kw)


def sgemm_peak(n: int = 2048, reps: int = 10, device: str = "cpu") -> float:
    """GFLOP/s of a float32 n×n matmul on `device` (the best of two timed rounds)."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    best = 0.0
    for _ in range(3):
        sync()
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync()
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t) / 1e9)
    return best


def flops_per_traj_step(model: torch.nn.Module) -> float:
    """Matmul FLOPs of one meta-optimizer call per trajectory, ×3 for forward + backward."""
    fwd = 0
    for mod in model.modules():
        if isinstance(mod, torch.nn.LSTMCell):
            fwd += 2 * 4 * mod.hidden_size * (mod.input_size + mod.hidden_size)
        elif isinstance(mod, torch.nn.Linear):
            fwd += 2 * mod.in_features * mod.out_features
    return 3.0 * fwd


def measure(method: str, B: int, windows: int, overrides: list[str], device: str) -> tuple[float, float]:
    """(traj-steps/s, FLOPs per traj-step) for `windows` timed windows after one warm-up window."""
    cfg = shipped(method, overrides, batch=B, trajectories=B, steps=10 * windows, unroll=10)
    run = train.build(cfg, device)
    task = RegressionFamily(tuple(cfg.keys.widths), cfg.keys.n).sample(train_seeds(0, 0, B), device=device)
    train_batch(run.model, run.opt, task, cfg.trainer, steps=10)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    t = time.perf_counter()
    train_batch(run.model, run.opt, task, cfg.trainer)
    sync()
    return B * 10 * windows / (time.perf_counter() - t), flops_per_traj_step(run.model)


def main() -> None:
    p = Parser(prog="meta_train_throughput.py", description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", choices=list(SHIPPED), default=list(SHIPPED))
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64, 256])
    p.add_argument("--windows", type=int, default=3)
    p.add_argument("--set", action="append", default=[], help="config override key=value (all methods)")
    p.add_argument("--device", type=device_arg, default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    a = p.parse_args()
    peak = sgemm_peak(device=a.device)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {a.device}; sgemm peak {peak:.1f} GFLOP/s")
    for method in a.methods:
        print(f"{method}  ({SHIPPED[method].name} {' '.join(a.set)})")
        print(f"{'B':>5} {'traj-steps/s':>13} {'GFLOP/s':>9} {'% peak':>7}")
        best = 0.0
        for B in a.batches:
            r, fl = measure(method, B, a.windows, a.set, a.device)
            best = max(best, r)
            print(f"{B:>5} {r:>13.0f} {r * fl / 1e9:>9.1f} {100 * r * fl / 1e9 / peak:>6.1f}%  ({fl / 1e6:.1f} MFLOP/traj-step)")
        print(f"{method}: best traj-steps/s {best:.0f}")


if __name__ == "__main__":
    main()
