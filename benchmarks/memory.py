"""Memory stays flat in long meta-training (the leak users of torchopt #218 and higher #6, #37 report).

Meta-trains a small config for 2,000 trajectories through `train.run` (held-out evaluation, TensorBoard logging
and checkpoints included) and prints the peak resident set size (VmHWM) reached by 200, 1,000 and 2,000
trajectories, and the growth from 200 to 2,000. Run it in a fresh process: the peak is process-wide. With
`--device cuda` the training runs on the GPU and the peak CUDA memory allocated by torch is reported beside the
resident set (untested on GPU: no GPU was lent).

    python benchmarks/memory.py [--method lstm-update-tele] [--trajectories 2000] [--at 200 1000 2000]
        [--json FILE] [--set key=value ...] [--device cpu]
"""
from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from metatele import config, train
from metatele.options import Parser, device_arg
from metatele.outer import trainer

SMALL = {"hidden": 16, "batch": 8, "steps": 20, "unroll": 10, "eval_every": 25, "eval_tasks": 4, "ckpt_every": 25}


def peak_rss_mib() -> float:
    """The process's peak resident set size so far (Linux VmHWM), MiB."""
    return int(re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text())[1]) / 1024


def peak_cuda_mib(device: str) -> float:
    """The peak CUDA memory torch has allocated on `device` so far, MiB."""
    return torch.cuda.max_memory_allocated(device) / 2**20


def measure(method: str, trajectories: int, at: list[int], overrides: list[str], device: str = "cpu"
            ) -> dict[str, Any]:
    """Meta-train `trajectories` trajectories of the SMALL config on `device`; the peak RSS (and on CUDA the peak
    CUDA memory allocated) when each count in `at` is reached (counted after the batch that reaches it)."""
    cfg = config.load(None, [f"{k}={v}" for k, v in SMALL.items()] + [f"method={method}",
                                                                       f"trajectories={trajectories}", *overrides])
    cuda = device.startswith("cuda")
    seen, peaks, cuda_peaks, real = [0], {}, {}, trainer.train_batch

    def counting(method_: Any, opt: Any, task: Any, *args: Any, **kw: Any) -> dict[str, float]:
        stats = real(method_, opt, task, *args, **kw)
        seen[0] += len(task.seeds)
        for n in at:
            if n not in peaks and seen[0] >= n:
                peaks[n] = peak_rss_mib()
                if cuda:
                    cuda_peaks[n] = peak_cuda_mib(device)
        return stats

    trainer.train_batch = counting
    try:
        with tempfile.TemporaryDirectory() as d:
            train.run(cfg, Path(d) / "o", device=device, logdir=Path(d) / "runs", progress=False)
    finally:
        trainer.train_batch = real
    growth = lambda p: p[max(at)] / p[min(at)] - 1  # noqa: E731
    r = {"method": method, "trajectories": trajectories, "config": {**SMALL, "overrides": overrides}, "device": device,
         "threads": torch.get_num_threads(), "peak_rss_mib": {str(k): round(v, 1) for k, v in peaks.items()},
         "growth": growth(peaks)}
    if cuda:
        r.update(peak_cuda_mib={str(k): round(v, 1) for k, v in cuda_peaks.items()}, cuda_growth=growth(cuda_peaks))
    return r


def main() -> None:
    p = Parser(prog="memory.py", description=__doc__.splitlines()[0])
    p.add_argument("--method", default="lstm-update-tele")
    p.add_argument("--trajectories", type=int, default=2000)
    p.add_argument("--at", type=int, nargs="+", default=[200, 1000, 2000])
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", help="also write the result as JSON here")
    p.add_argument("--device", type=device_arg, default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    a = p.parse_args()
    torch.set_num_threads(1)
    r = measure(a.method, a.trajectories, a.at, a.set, a.device)
    for key, what in (("peak_rss_mib", "peak RSS"), ("peak_cuda_mib", "peak CUDA memory allocated")):
        for n, v in r.get(key, {}).items():
            print(f"{a.method}: {what} after {n:>5} trajectories: {v:8.1f} MiB")
    print(f"{a.method}: RSS growth from {min(a.at)} to {max(a.at)} trajectories: {100 * r['growth']:+.2f}%")
    if "cuda_growth" in r:
        print(f"{a.method}: CUDA memory growth from {min(a.at)} to {max(a.at)} trajectories: "
              f"{100 * r['cuda_growth']:+.2f}%")
    if a.json:
        Path(a.json).write_text(json.dumps(r))


if __name__ == "__main__":
    main()
