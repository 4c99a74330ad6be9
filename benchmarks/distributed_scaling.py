"""Distributed meta-training on one machine: P processes × 1 thread (torchrun, gloo) against 1 process × P threads
and 1 process × 1 thread, at the shipped sizes (lstm-update-tele's
config in experiments/pretrained; tasks 20-20-20, n 20, unroll 10), and a paper estimate of the efficiency at many ranks.

For each global batch B it prints traj-steps/s of each layout (median, min and max over --repeats rounds; each
round times --windows windows after a warm-up window), the scaling efficiency, and per window: the time the
ranks spend in collectives (which includes waiting for the slower rank), the time of a bare all-reduce of the
meta-gradient (n_params + 1 float32) on idle ranks, and the compute time. From the meta-gradient's size and
the measured compute time per window at B/P trajectories per rank, it estimates the weak-scaling efficiency at
8, 64 and 512 ranks with a ring all-reduce on a 100 Gb/s network:
    t_comm(p) = 2(p−1)/p · S / BW + 2 · 2(p−1) · α      (S = 4 (n_params + 1) bytes; gradient + finite flag)
    efficiency = t_compute / (t_compute + t_comm)       (no overlap of communication with compute)

CPU only, by design: it compares CPU processes (gloo) with CPU threads, so it has no --device option; GPU ranks
(nccl, one device each) are what `torchrun ... metatele train --device cuda` runs, and are untested here (no GPU
was lent).

    python benchmarks/distributed_scaling.py [--ranks 2] [--batches 32 64] [--windows 3] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.distributed as dist
from meta_train_throughput import SHIPPED, sgemm_peak, shipped

from metatele import config, train
from metatele.outer import distributed
from metatele.outer.trainer import train_batch
from metatele.tasks.seeds import train_seeds

METHOD = "lstm-update-tele"
BANDWIDTH = 100e9 / 8   # bytes/s: 100 Gb/s
LATENCY = (5e-6, 25e-6)  # s per ring step: RDMA-class, TCP-class (assumed, not measured)


class Timed(distributed.Collective):
    """A Collective that adds up the seconds spent in the trainer's collectives."""

    seconds = 0.0

    def all_reduce_grads(self, params, weight):  # type: ignore[no-untyped-def]
        t = time.perf_counter()
        super().all_reduce_grads(params, weight)
        self.seconds += time.perf_counter() - t

    def all_finite(self, flag: bool) -> bool:
        t = time.perf_counter()
        out = super().all_finite(flag)
        self.seconds += time.perf_counter() - t
        return out


def configs(B: int, windows: int) -> tuple[config.TrainConfig, config.TrainConfig]:
    """(warm-up config: one window, timed config: `windows` windows) for global batch B."""
    return (shipped(METHOD, [], batch=B, trajectories=B, unroll=10, steps=10),
            shipped(METHOD, [], batch=B, trajectories=B, unroll=10, steps=10 * windows))


def one_process(B: int, windows: int, threads: int) -> float:
    """traj-steps/s of one process on `threads` threads."""
    torch.set_num_threads(threads)
    warm, timed = configs(B, windows)
    run = train.build(timed)
    task = timed.family.sample(train_seeds(0, 0, B))
    train_batch(run.model, run.opt, task, warm.trainer)
    t = time.perf_counter()
    train_batch(run.model, run.opt, task, timed.trainer)
    return B * 10 * windows / (time.perf_counter() - t)


def worker(batches: list[int], windows: int) -> None:
    """One rank (under torchrun): time each batch; rank 0 prints one JSON line per batch."""
    with distributed.from_env() as plain:
        comm = Timed(plain.device, plain.rank, plain.world)
        for B in batches:
            warm, timed = configs(B, windows)
            run = train.build(timed)
            task = train.rank_tasks(timed.family, train_seeds(0, 0, B), comm)
            train_batch(run.model, run.opt, task, warm.trainer, reducer=comm)
            comm.barrier("timing")
            comm.seconds = 0.0
            t = time.perf_counter()
            train_batch(run.model, run.opt, task, timed.trainer, reducer=comm)
            elapsed = torch.tensor([time.perf_counter() - t, comm.seconds, -comm.seconds], dtype=torch.float64)
            dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
            wall, comm_max, comm_min = float(elapsed[0]), float(elapsed[1]), -float(elapsed[2])
            n = sum(p.numel() for p in run.model.parameters())
            flat = torch.zeros(n + 1)
            comm.barrier("timing")
            t = time.perf_counter()
            for _ in range(20):
                dist.all_reduce(flat)
            bare = (time.perf_counter() - t) / 20
            if comm.rank == 0:
                print(json.dumps({"B": B, "rate": B * 10 * windows / wall, "window_s": wall / windows,
                                  "in_collectives_s": comm_max / windows, "compute_s": (wall - comm_min) / windows,
                                  "bare_allreduce_s": bare, "n_params": n, "threads": torch.get_num_threads()}),
                      flush=True)


def ranks(P: int, batches: list[int], windows: int) -> list[dict]:
    """Run the workers under torchrun; rank 0's JSON lines."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={P}", __file__,
           "--worker", "--batches", *map(str, batches), "--windows", str(windows)]
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, check=True)
    return [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def ring_seconds(p: int, nbytes: float, alpha: float) -> float:
    """A ring all-reduce of the gradient plus one of the finite flag (latency only)."""
    return 2 * (p - 1) / p * nbytes / BANDWIDTH + 2 * 2 * (p - 1) * alpha


def main() -> None:
    ap = argparse.ArgumentParser(description="Distributed meta-training on one machine: P processes × 1 thread against "
                                 "1 process × P threads. CPU only: it compares CPU processes (gloo) with CPU threads, "
                                 "so it has no --device option.")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--batches", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--windows", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        worker(a.batches, a.windows)
        return
    P = a.ranks
    print(f"torch {torch.__version__}; {os.cpu_count()} CPUs; sgemm peak {sgemm_peak():.1f} GFLOP/s on "
          f"{torch.get_num_threads()} threads; {load()}")
    print(f"{METHOD} (shipped config {SHIPPED[METHOD].name}), tasks 20-20-20, unroll 10, {a.windows} timed windows, "
          f"{a.repeats} rounds")
    rows: dict[int, dict[str, list]] = {B: {"1x1": [], f"1x{P}": [], f"{P}x1": [], "dist": []} for B in a.batches}
    for r in range(a.repeats):
        print(f"round {r + 1}: {load()}", flush=True)
        for B in a.batches:
            rows[B]["1x1"].append(one_process(B, a.windows, 1))
            rows[B][f"1x{P}"].append(one_process(B, a.windows, P))
        for res in ranks(P, a.batches, a.windows):
            rows[res["B"]][f"{P}x1"].append(res["rate"])
            rows[res["B"]]["dist"].append(res)
    print(f"after: {load()}")
    fmt = lambda xs: f"{statistics.median(xs):7.0f} [{min(xs):.0f}–{max(xs):.0f}]"  # noqa: E731
    print(f"\ntraj-steps/s, median [min–max] over {a.repeats} rounds")
    print(f"{'B':>4} {'1 proc × 1 thr':>22} {f'1 proc × {P} thr':>22} {f'{P} proc × 1 thr':>22} "
          f"{f'eff. vs {P}×(1×1)':>15} {f'speed-up vs 1×{P}':>16}")
    for B, v in rows.items():
        m1, mP, d = (statistics.median(v[k]) for k in ("1x1", f"1x{P}", f"{P}x1"))
        print(f"{B:>4} {fmt(v['1x1']):>22} {fmt(v[f'1x{P}']):>22} {fmt(v[f'{P}x1']):>22} {d / (P * m1):>15.2f} "
              f"{d / mP:>16.2f}")
    print(f"\nper window ({P} ranks, median over rounds): wall, compute, time in collectives (incl. waiting), "
          "bare all-reduce")
    for B, v in rows.items():
        med = {k: statistics.median(x[k] for x in v["dist"]) for k in v["dist"][0] if k != "threads"}
        print(f"{B:>4}: wall {1e3 * med['window_s']:.0f} ms, compute {1e3 * med['compute_s']:.0f} ms, in collectives "
              f"{1e3 * med['in_collectives_s']:.1f} ms, bare all-reduce {1e3 * med['bare_allreduce_s']:.2f} ms "
              f"({4 * (med['n_params'] + 1) / 1e6:.2f} MB; {v['dist'][0]['threads']} thread per rank)")
    n = rows[a.batches[0]]["dist"][0]["n_params"]
    nbytes = 4 * (n + 1)
    print(f"\nestimate on paper: weak scaling (each rank keeps B/{P} trajectories), ring all-reduce of {n} + 1 "
          f"float32 = {nbytes / 1e6:.2f} MB per window on 100 Gb/s, α = latency per ring step")
    for B, v in rows.items():
        tc = statistics.median(x["compute_s"] for x in v["dist"])
        for alpha in LATENCY:
            effs = "  ".join(f"p={p}: {tc / (tc + ring_seconds(p, nbytes, alpha)):.3f} "
                             f"({1e3 * ring_seconds(p, nbytes, alpha):.2f} ms)" for p in (8, 64, 512))
            print(f"  {B // P:>3} traj/rank (compute {1e3 * tc:.0f} ms/window), α = {1e6 * alpha:.0f} µs: {effs}")


if __name__ == "__main__":
    main()
