"""What a learned optimizer costs in a user's own training loop: ms per whole training step (zero_grad, forward,
backward, optimizer step) and ms per optimizer step alone, for torch.optim.Adam, `LearnedOptimizer` without
teleport and `LearnedOptimizer` teleporting every k steps, on 64-32-10 and 784-256-256-10 MLPs (with biases,
LeakyReLU) at batch 128, with random data of the right shape. The configurations are interleaved in rounds and
each figure is the median over rounds, so that a busy machine slows them alike; ratios are taken within one run.
The machine's sgemm peak is printed beside.

    python benchmarks/optimizer_overhead.py [--device cuda] [--steps 30] [--rounds 5] [--threads 1] [--every 10]

Targets (issue 25): the update without teleport ≤ 3× Adam's optimizer step; teleport every 10 steps adds ≤ 50% to
a whole training step.
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from meta_train_throughput import sgemm_peak
from metatele.optim import LearnedOptimizer

SHAPES = {"64-32-10": (64, 32, 10), "784-256-256-10": (784, 256, 256, 10)}
BATCH = 128


def mlp(widths: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        layers += ([nn.LeakyReLU(0.1)] if i else []) + [nn.Linear(a, b)]
    return nn.Sequential(*layers)


def optimizers(every: int) -> dict[str, Callable[[nn.Module], torch.optim.Optimizer]]:
    return {
        "adam": lambda m: torch.optim.Adam(m.parameters(), lr=1e-3),
        "any-update": lambda m: LearnedOptimizer(m.parameters(), "any-update", lr=0.3),
        f"any-update-tele, teleport every {every}": lambda m: LearnedOptimizer(
            m.parameters(), "any-update-tele", lr=0.3, model=m, teleport_every=every),
    }


def run(model: nn.Module, opt: torch.optim.Optimizer, data: list[tuple[torch.Tensor, torch.Tensor]], device: str
        ) -> tuple[float, float]:
    """(ms per training step, ms per optimizer step) over the batches in `data`."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    in_step = 0.0
    sync()
    start = time.perf_counter()
    for x, y in data:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        sync()
        t = time.perf_counter()
        opt.step()
        sync()
        in_step += time.perf_counter() - t
    total = time.perf_counter() - start
    return 1e3 * total / len(data), 1e3 * in_step / len(data)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=30, help="training steps per round and configuration")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--every", type=int, default=10, help="teleport every k steps")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = args.device
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}; "
          f"sgemm peak {sgemm_peak(device=device):.1f} GFLOP/s; batch {BATCH}, {args.steps} steps × {args.rounds} rounds")
    g = torch.Generator().manual_seed(0)
    print("| shape | optimizer | ms / training step | ms / optimizer step | opt step vs Adam's | training step vs no teleport |")
    print("|---|---|---|---|---|---|")
    for shape, widths in SHAPES.items():
        data = [(torch.randn(BATCH, widths[0], generator=g).to(device),
                 torch.randint(0, widths[-1], (BATCH,), generator=g).to(device)) for _ in range(args.steps)]
        makers = optimizers(args.every)
        times: dict[str, list[tuple[float, float]]] = {k: [] for k in makers}
        for _ in range(args.rounds + 1):  # the first round warms up and is dropped
            for name, make in makers.items():
                torch.manual_seed(0)
                model = mlp(widths).to(device)
                times[name].append(run(model, make(model), data, device))
        med = {k: (statistics.median(t for t, _ in v[1:]), statistics.median(o for _, o in v[1:]))
               for k, v in times.items()}
        adam_opt = med["adam"][1]
        base = med["any-update"][0]
        for name, (total, opt) in med.items():
            vs_base = f"{total / base:.2f}×" if name.startswith("any-update-tele") else ""
            print(f"| {shape} | {name} | {total:.2f} | {opt:.3f} | {opt / adam_opt:.1f}× | {vs_base} |")


if __name__ == "__main__":
    main()
