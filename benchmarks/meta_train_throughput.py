"""Meta-training throughput of lstm-update-tele at paper sizes (hidden 300, 20×20 tasks).

Prints traj-steps/s at B = 1, 16, 64, 256 (unroll 10, full meta-update per window), the achieved
GFLOP/s (counted from the LSTM/linear matmuls, forward + backward), and an sgemm peak measured on
this machine in the same run. Last line: `best traj-steps/s: N`.

    python benchmarks/meta_train_throughput.py [--batches 1 16 64 256] [--windows 3]
"""
from __future__ import annotations

import argparse
import time

import torch

from metatele import config, tasks, train
from metatele.learned.trainer import train_batch
from metatele.tasks.seeds import train_seeds


def sgemm_peak(n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def flops_per_traj_step(model: torch.nn.Module) -> float:
    """Matmul FLOPs of one meta-optimizer call per trajectory, ×3 for forward + backward."""
    fwd = 0
    for mod in model.modules():
        if isinstance(mod, torch.nn.LSTMCell):
            fwd += 2 * 4 * mod.hidden_size * (mod.input_size + mod.hidden_size)
        elif isinstance(mod, torch.nn.Linear):
            fwd += 2 * mod.in_features * mod.out_features
    return 3.0 * fwd


def measure(B: int, windows: int, cfg_kw: dict) -> float:
    cfg = config.load(method="lstm-update-tele", batch=B, trajectories=B, steps=10 * (windows + 1), unroll=10,
                      eval_every=0, **cfg_kw)
    run = train.build(cfg)
    task = tasks.sample(train_seeds(0, 0, B))
    # warm-up on a one-window trajectory, then time `windows` windows
    train_batch(run.model, run.opt, task, config.load(**{**config.to_dict(cfg), "steps": 10}))
    timed = config.load(**{**config.to_dict(cfg), "steps": 10 * windows})
    t = time.perf_counter()
    train_batch(run.model, run.opt, task, timed)
    return B * 10 * windows / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64, 256])
    p.add_argument("--windows", type=int, default=3)
    p.add_argument("--set", action="append", default=[], help="config override key=value")
    a = p.parse_args()
    kw = dict(kv.split("=", 1) for kv in a.set)
    cfg = config.load(method="lstm-update-tele", **kw)
    fl = flops_per_traj_step(train.build(cfg).model)
    peak = sgemm_peak()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, preprocessing {cfg.preprocessing}, "
          f"second_order {cfg.second_order}; {fl / 1e6:.1f} MFLOP per traj-step; sgemm peak {peak:.1f} GFLOP/s")
    print(f"{'B':>5} {'traj-steps/s':>13} {'GFLOP/s':>9} {'% peak':>7}")
    best = 0.0
    for B in a.batches:
        r = measure(B, a.windows, kw)
        best = max(best, r)
        print(f"{B:>5} {r:>13.0f} {r * fl / 1e9:>9.1f} {100 * r * fl / 1e9 / peak:>6.1f}%")
    print(f"best traj-steps/s: {best:.0f}")


if __name__ == "__main__":
    main()
