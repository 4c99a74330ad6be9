"""What a learned optimizer costs in a user's own training loop: ms per whole training step (zero_grad, forward,
backward, optimizer step) and ms per optimizer step alone, for torch.optim.Adam, `LearnedOptimizer` without
teleport and `LearnedOptimizer` teleporting every k steps (the round-2 `any-update(-tele)` and the Adam-nominal
`adafac(-tele)`), on 64-32-10 and 784-256-256-10 MLPs (with biases,
LeakyReLU) at batch 128, with random data of the right shape. The configurations are interleaved in rounds and
each figure is the median over rounds, so that a busy machine slows them alike; ratios are taken within one run,
on this process's CPU time (wall-clock is shown too; on a shared machine it includes waiting for a core).
The machine's sgemm peak is printed beside.

`--device cuda` (or cuda:N) runs it on a GPU; that path is untested (no GPU was lent).

    python benchmarks/optimizer_overhead.py [--device cuda] [--steps 30] [--rounds 5] [--threads 1] [--every 10]

Targets (issue 25): the update without teleport ≤ 3× Adam's optimizer step; teleport every 10 steps adds ≤ 50% to
a whole training step.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from meta_train_throughput import sgemm_peak
from metatele.optim import LearnedOptimizer
from metatele.options import Parser, device_arg

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
        "adafac": lambda m: LearnedOptimizer(m.parameters(), "adafac"),
        f"adafac-tele, teleport every {every}": lambda m: LearnedOptimizer(
            m.parameters(), "adafac-tele", model=m, teleport_every=every),
    }


def run(model: nn.Module, opt: torch.optim.Optimizer, data: list[tuple[torch.Tensor, torch.Tensor]], device: str
        ) -> tuple[float, float, float, float]:
    """ms per training step and per optimizer step over the batches in `data`, each as wall-clock and as this
    process's CPU time (the CPU time is what a shared machine's other jobs do not inflate; one thread)."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    wall = cpu = 0.0
    sync()
    start, start_cpu = time.perf_counter(), time.process_time()
    for x, y in data:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        sync()
        t, c = time.perf_counter(), time.process_time()
        opt.step()
        sync()
        wall += time.perf_counter() - t
        cpu += time.process_time() - c
    total, total_cpu = time.perf_counter() - start, time.process_time() - start_cpu
    return tuple(1e3 * v / len(data) for v in (total, wall, total_cpu, cpu))  # type: ignore[return-value]


def main() -> None:
    ap = Parser(prog="optimizer_overhead.py", description=__doc__.splitlines()[0])
    ap.add_argument("--device", type=device_arg, default="cpu",
                    help="cpu, cuda or cuda:N (default cpu; on CUDA read the wall-clock figures: CPU time is the host's)")
    ap.add_argument("--steps", type=int, default=30, help="training steps per round and configuration")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--every", type=int, default=10, help="teleport every k steps")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = args.device
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}; "
          f"sgemm peak {sgemm_peak(device=device):.1f} GFLOP/s; batch {BATCH}, "
          f"{args.steps} steps × {args.rounds} rounds")
    g = torch.Generator().manual_seed(0)
    print("| shape | optimizer | ms / training step, wall (CPU) | ms / optimizer step, wall (CPU) | optimizer step vs "
          "Adam's (CPU) | training step vs no teleport (CPU) |")
    print("|---|---|---|---|---|---|")
    for shape, widths in SHAPES.items():
        data = [(torch.randn(BATCH, widths[0], generator=g).to(device),
                 torch.randint(0, widths[-1], (BATCH,), generator=g).to(device)) for _ in range(args.steps)]
        makers = optimizers(args.every)
        times: dict[str, list[tuple[float, ...]]] = {k: [] for k in makers}
        for _ in range(args.rounds + 1):  # the first round warms up and is dropped
            for name, make in makers.items():
                torch.manual_seed(0)
                model = mlp(widths).to(device)
                times[name].append(run(model, make(model), data, device))
        med = {k: [statistics.median(r[i] for r in v[1:]) for i in range(4)] for k, v in times.items()}
        adam_cpu, base_cpu = med["adam"][3], med["any-update"][2]
        for name, (total, opt, total_cpu, opt_cpu) in med.items():
            vs_base = f"{total_cpu / base_cpu:.2f}×" if name.startswith("any-update-tele") else ""
            print(f"| {shape} | {name} | {total:.2f} ({total_cpu:.2f}) | {opt:.2f} ({opt_cpu:.2f}) | "
                  f"{opt_cpu / adam_cpu:.1f}× | {vs_base} |")


if __name__ == "__main__":
    main()
