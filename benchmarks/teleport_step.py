"""What a teleport costs in one evaluation step: `any-update-tele` (which teleports along the steepest-ascent
direction of ‖∇L‖² on every step) against `any-update` (the same architecture without teleport), both loaded from
the shipped checkpoints and run side by side on the same B regression tasks (rollout's no-grad inner step). Also
times the steepest-ascent direction alone (`metatele.teleport.ascent.steepest_direction`) and the meta-training
step (differentiable, second order) of both methods. Measurements alternate between the methods, so that load
from other processes hits both alike; each figure is the median over rounds. The sgemm peak is printed beside.

`--device cuda` (or cuda:N) runs it on a GPU; that path is untested (no GPU was lent).

    python benchmarks/teleport_step.py [--widths 20,20,20 64,64,64] [--tasks 64] [--rounds 7] [--device cpu]
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from meta_train_throughput import sgemm_peak

from metatele import checkpoints
from metatele.options import Parser, device_arg
from metatele.step import inner_step
from metatele.tasks import PAPER_N, RegressionFamily
from metatele.teleport.ascent import steepest_direction

CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"


def seconds(fn: Callable[[], object], sync: Callable[[], None], reps: int) -> float:
    """Mean seconds per call of fn over reps calls."""
    sync()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    sync()
    return (time.perf_counter() - t) / reps


def measure(widths: tuple[int, ...], B: int, rounds: int, reps: int, device: str) -> dict[str, float]:
    """Median seconds of each timed operation at `widths` on B tasks."""
    family = RegressionFamily(widths, min(PAPER_N, min(widths[:-2])))
    task = family.sample(range(10**6, 10**6 + B), device=device)  # test seeds (disjoint from training)
    methods = {name: checkpoints.load_model(CHECKPOINTS / name, method=name, device=device)
               for name in ("any-update", "any-update-tele")}
    weights = task.init_weights()
    states = {name: m.init_state(weights) for name, m in methods.items()}
    data = task.teleport_data(0)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def eval_step(name: str) -> Callable[[], object]:
        def run() -> object:
            with torch.no_grad():
                return inner_step(methods[name], weights, states[name], task, 0)
        return run

    def meta_step(name: str) -> Callable[[], object]:
        def run() -> object:
            w = [x.detach().requires_grad_() for x in weights]
            res = inner_step(methods[name], w, methods[name].init_state(w), task, 0, differentiable=True)
            loss = task.loss(res.weights, task.data(1)).sum()
            return torch.autograd.grad(loss, [*w, *methods[name].parameters()], allow_unused=True)
        return run

    ops = {"eval any-update": eval_step("any-update"), "eval any-update-tele": eval_step("any-update-tele"),
           "steepest_direction": lambda: steepest_direction(weights, task, data, X_pinv=data.X_pinv,
                                                            skip_invalid=True),
           "meta any-update": meta_step("any-update"), "meta any-update-tele": meta_step("any-update-tele")}
    for fn in ops.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in ops}
    for _ in range(rounds):
        for k, fn in ops.items():
            times[k].append(seconds(fn, sync, reps))
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    p = Parser(prog="teleport_step.py", description=__doc__.splitlines()[0])
    p.add_argument("--widths", nargs="+", default=["20,20,20", "64,64,64"])
    p.add_argument("--tasks", type=int, default=64)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--reps", type=int, default=3, help="calls per timed round")
    p.add_argument("--device", type=device_arg, default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    a = p.parse_args()
    peak = sgemm_peak(device=a.device)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {a.device}, "
          f"sgemm peak {peak:.1f} GFLOP/s (before)")
    for text in a.widths:
        widths = tuple(int(v) for v in text.split(","))
        t = measure(widths, a.tasks, a.rounds, a.reps, a.device)
        for kind in ("eval", "meta"):
            plain, tele = t[f"{kind} any-update"], t[f"{kind} any-update-tele"]
            print(f"widths {text} B={a.tasks} {kind} step: any-update {1e3 * plain:.1f} ms, any-update-tele "
                  f"{1e3 * tele:.1f} ms, ratio {tele / plain:.2f}")
        print(f"widths {text} B={a.tasks} steepest_direction alone: {1e3 * t['steepest_direction']:.1f} ms")
    print(f"sgemm peak {sgemm_peak(device=a.device):.1f} GFLOP/s (after)")


if __name__ == "__main__":
    main()
