"""Command-line option types (one-line errors, exit 2) and the options every `metatele` command shares, defined
once: --out, --logdir, --device, --no-progress, --threads. Also the checks the CLI makes before long work
(device, memory) and the one-line reason for an allocator failure."""
from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Sequence
from typing import Any

import torch

from metatele import checks
from metatele.errors import ConfigError
from metatele.tasks.seeds import MAX_SEED

__all__ = ["MAX_TASKS", "MAX_THREADS", "DEFAULT_THREADS", "SMALLER", "Parser", "int_in", "positive_int", "nonneg_int",
           "task_count", "widths_arg", "location", "resolve_device", "device_arg", "check_memory", "common_options",
           "allocation_failure"]

MAX_TASKS = 10**4      # evaluation tasks per run (--tasks)
MAX_THREADS = 1024
DEFAULT_THREADS = 1  # measured in benchmarks/threads.py, see docs/threads.md
THREADS_WHY = "the networks are small; on a busy 2-core machine more threads wait on each other"
SMALLER = "use fewer tasks, smaller widths or a smaller config"
DEVICE = re.compile(r"cpu|cuda(:\d+)?")


class Parser(argparse.ArgumentParser):
    """No prefix matching (`--step 5` is not `--steps 5`); errors are one line with exit code 2."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **{**kw, "allow_abbrev": False})

    def error(self, message: str) -> None:  # one line, exit 2, no usage dump
        self.exit(2, f"metatele: error: {message} (see '{self.prog} --help')\n")


def int_in(lo: int, hi: int) -> Callable[[str], int]:
    """An argparse type: an integer in [lo, hi] (a float such as 2.5 is refused, not truncated)."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer in [{lo}, {hi}], got {text!r}") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"expected an integer in [{lo}, {hi}], got {v}")
        return v

    return parse


positive_int = int_in(1, 10**7)   # counts such as --steps
nonneg_int = int_in(0, MAX_SEED)  # task seeds
task_count = int_in(1, MAX_TASKS)


def widths_arg(text: str) -> list[int]:
    try:
        widths = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 20,32,32,20, got {text!r}") from None
    try:
        return list(checks.widths("--widths", widths))  # 3 … 17 widths, each in [1, 4096]
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def location(text: str) -> str:
    """An argparse type for output paths (--out, --logdir, --json): refuses an empty or blank one, which would
    otherwise mean the current directory."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"an output location must be a path, got {text!r}")
    return text


def resolve_device(name: str) -> str:
    """`name` if it is cpu, cuda or cuda:N and this machine has that device, else ConfigError (called by every
    command before its work starts)."""
    if not DEVICE.fullmatch(name):
        raise ConfigError(f"--device must be cpu, cuda or cuda:N, got {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name} requested but CUDA is not available on this machine; use --device cpu")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise ConfigError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                          f"cuda:0 … cuda:{torch.cuda.device_count() - 1}")
    return name


def device_arg(text: str) -> str:
    """An argparse type for a --device option (the benchmarks'): `resolve_device`, its refusal as a usage error."""
    try:
        return resolve_device(text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def check_memory(widths: Sequence[int], tasks: int, device: str) -> None:
    """Before building `tasks` networks of these widths on the CPU: ConfigError naming the size if their
    weights and gradients alone (float32; a lower bound on what evaluation holds) exceed the memory left."""
    need = 2 * 4 * tasks * sum(a * b for a, b in zip(widths, widths[1:]))
    free = checks.available_memory() if device == "cpu" else None
    if free is not None and need > free:
        raise ConfigError(f"{tasks} tasks of widths {','.join(map(str, widths))} need at least "
                          f"{need / 2**30:.1f} GiB, but {max(free, 0) / 2**30:.1f} GiB is available; {SMALLER}")



def common_options(p: argparse.ArgumentParser, out: str | None, out_help: str, logdir: str | None, logdir_help: str
            ) -> None:
    """The options every command shares (each trains or evaluates), defined once: --out (required when `out`
    is None), --logdir, --device, --no-progress and --threads (applied by `main` around the command)."""
    p.add_argument("--out", type=location, required=out is None, default=out,
                   help=out_help + ("" if out is None else f" (default {out})"))
    p.add_argument("--logdir", type=location, default=logdir, help=f"TensorBoard log directory ({logdir_help})")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--threads", type=int_in(1, MAX_THREADS), default=DEFAULT_THREADS,
                   help=f"torch CPU threads (default {DEFAULT_THREADS}: {THREADS_WHY}; see docs/threads.md)")



def allocation_failure(e: RuntimeError) -> str | None:
    """A one-line reason if `e` is torch's allocator failing (CPU or CUDA), else None."""
    text = str(e)
    if "can't allocate memory" not in text and "out of memory" not in text.lower():
        return None
    size = re.search(r"allocate (\d+) bytes", text)
    return f"out of memory allocating {int(size[1]) / 2**30:.1f} GiB" if size else "out of memory"
