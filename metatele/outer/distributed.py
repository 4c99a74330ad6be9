"""Distributed meta-training on torch.distributed, launched by torchrun: gloo on the CPU, nccl on GPUs.

Meta-training is data-parallel over trajectories. Every rank holds the whole meta-optimizer and its Adam
state. A global batch of B trajectories is cut into contiguous slices of trajectory seeds, one per rank
(`share`), so the tasks trained on are those of a single-process run. The meta-loss of a window is the mean
over the B tasks, Σ_r (B_r/B)·mean_r, so after each window's backward pass the meta-gradients are summed in
one flat all-reduce, weighted by each rank's trajectory count B_r, and divided by B: the single-process
meta-gradient up to float summation order. Gloo and NCCL hand every rank the same reduced bits, so the
clipped Adam steps (and the skip decision on a non-finite gradient norm) agree on every rank and the ranks
never drift apart; whether a window's losses are finite is agreed by an all-reduce before the backward pass.
(DistributedDataParallel would not help: the meta-optimizer is called through `propose`, not `forward`.)

Rank 0 alone logs, evaluates and writes checkpoints; the others wait at a barrier. A stop request (SIGINT or
SIGTERM on any rank) is agreed at batch boundaries, so all ranks stop after the same batch and rank 0 saves
once. A rank that dies or hangs makes the others raise DistributedError: gloo notices a closed connection at
once, anything else after METATELE_DIST_TIMEOUT seconds (default 1800; a barrier also waits this long for
rank 0's held-out evaluation).

Without torchrun's environment (WORLD_SIZE unset or 1), `from_env` gives `Solo`, whose collectives do
nothing: single-process training is unchanged, bit for bit. The nccl path is untested (no GPU was at hand).
"""
from __future__ import annotations

import contextlib
import datetime
import importlib
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import torch
import torch.distributed as dist

from metatele.errors import ConfigError, DistributedError
from metatele.outer.settings import TrainerSettings
from metatele.signals import StopFlag

__all__ = ["Reducer", "Solo", "Collective", "AgreedStop", "SOLO", "TIMEOUT_ENV", "from_env", "threads_per_rank"]

TIMEOUT_ENV = "METATELE_DIST_TIMEOUT"
DEFAULT_TIMEOUT = 1800.0  # seconds, torch's default for gloo
SHARED_STATS = ("grad_norm", "skipped", "windows")  # batch statistics equal on every rank (taken from rank 0)
SUMMED_STATS = ("frozen",)                         # counts of tasks: summed over ranks; the rest: weighted means

P = TypeVar("P")


class Reducer(Protocol):
    """What the trainer needs from the other ranks within a batch."""

    def all_reduce_grads(self, params: Sequence[torch.Tensor], weight: float) -> None:
        """Replace each p.grad by Σ_r weight_r·grad_r / Σ_r weight_r (params whose grad is None are left)."""
        ...

    def all_finite(self, flag: bool) -> bool:
        """True iff `flag` is true on every rank."""
        ...


@dataclass
class Solo:
    """One process: the collectives are identities, rank 0 does everything."""

    device: str = "cpu"
    rank: int = 0
    world: int = 1

    def share(self, count: int) -> tuple[int, int]:
        """This rank's contiguous slice of `count` trajectories: (offset, length); the first count mod world
        ranks take one more."""
        base, extra = divmod(count, self.world)
        return self.rank * base + min(self.rank, extra), base + (self.rank < extra)

    def check(self, settings: TrainerSettings) -> None:
        """ConfigError unless every batch (the last may be smaller) gives each rank a trajectory."""
        smallest = settings.trajectories % settings.batch or settings.batch
        if smallest < self.world:
            raise ConfigError(f"{self.world} ranks need at least one trajectory each in every batch, but batch="
                              f"{settings.batch} and trajectories={settings.trajectories} make a batch of {smallest}; "
                              f"use at most {smallest} ranks or change batch/trajectories",
                              params=("batch", "trajectories"))

    def all_reduce_grads(self, params: Sequence[torch.Tensor], weight: float) -> None:
        pass

    def all_finite(self, flag: bool) -> bool:
        return flag

    def stop(self, flag: StopFlag) -> Callable[[], bool]:
        """The stop request to poll at batch boundaries."""
        return flag

    def sync(self, model: torch.nn.Module, opt: torch.optim.Optimizer, progress: P) -> P:
        """Give every rank rank 0's parameters, optimizer state and progress; returns the progress."""
        return progress

    def on_rank0(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run fn(*args) on rank 0 while the other ranks wait."""
        fn(*args)

    def failing_together(self) -> None:
        """Called once all ranks agreed to stop with an error (each then prints its line and exits 2)."""

    def batch_callback(self, fn: Callable[[P, dict[str, float], int], None]
                       ) -> Callable[[P, dict[str, float], int], None]:
        """Wrap the trainer's after_batch(progress, stats, global batch size): rank 0 runs it on the batch
        statistics of all ranks while the other ranks wait."""
        return fn


SOLO = Solo()


class AgreedStop:
    """Callable polled by every rank at the same points: true once any rank's StopFlag is set (collective).
    `signum` is the largest signal number asked on any rank."""

    def __init__(self, comm: Collective, flag: StopFlag) -> None:
        self.comm, self.flag, self.signum = comm, flag, None

    def __call__(self) -> bool:
        if self.signum is None:  # once agreed, every rank knows: no more communication
            t = torch.tensor([float(self.flag.signum or 0)], device=self.comm.device)
            self.comm.collective("agreeing on a stop request", dist.all_reduce, t, op=dist.ReduceOp.MAX)
            self.signum = int(t.item()) or None
        return self.signum is not None


class Collective(Solo):
    """One rank of a torch.distributed process group (initialized by `from_env`)."""

    def collective(self, what: str, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        """fn(*args, **kw), a torch.distributed call; its failure (another rank died or hung) → DistributedError."""
        try:
            return fn(*args, **kw)
        except RuntimeError as e:
            reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            raise DistributedError(
                f"rank {self.rank} of {self.world}: lost contact with the other ranks while {what} ({reason}). "
                "Another rank probably died or hung; see its output. The training state last saved in the output "
                "directory is intact: relaunch, resuming from it") from None

    def all_reduce_grads(self, params: Sequence[torch.Tensor], weight: float) -> None:
        grads = [p.grad for p in params if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads] + [torch.ones(1, dtype=params[0].dtype, device=params[0].device)])
        flat.mul_(weight)  # the last entry becomes the weight
        self.collective("averaging the meta-gradient", dist.all_reduce, flat)
        for g, part in zip(grads, flat[:-1].div_(flat[-1]).split([g.numel() for g in grads])):
            g.copy_(part.view_as(g))

    def all_finite(self, flag: bool) -> bool:
        t = torch.tensor([0.0 if flag else 1.0], device=self.device)
        self.collective("agreeing whether the window is finite", dist.all_reduce, t)
        return bool(t.item() == 0)

    def stop(self, flag: StopFlag) -> AgreedStop:
        return AgreedStop(self, flag)

    def failing_together(self) -> None:
        """Ignore SIGTERM from now on: torchrun sends it to every rank once the first one exits, and would kill
        the others before they print the agreed line and exit 2."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, signal.SIG_IGN)

    def barrier(self, what: str) -> None:
        self.collective(what, dist.barrier)

    def sync(self, model: torch.nn.Module, opt: torch.optim.Optimizer, progress: P) -> P:
        box = [(_cpu(model.state_dict()), _cpu(opt.state_dict()), progress) if self.rank == 0 else None]
        self.collective("receiving rank 0's training state", dist.broadcast_object_list, box, src=0)
        model_state, opt_state, progress = box[0]
        if self.rank != 0:
            model.load_state_dict(model_state)
            opt.load_state_dict(opt_state)
        return progress

    def on_rank0(self, fn: Callable[..., Any], *args: Any) -> None:
        if self.rank == 0:
            fn(*args)
        self.barrier("waiting for rank 0 to save")

    def batch_callback(self, fn: Callable[[P, dict[str, float], int], None]
                       ) -> Callable[[P, dict[str, float], int], None]:
        def after_batch(progress: P, stats: dict[str, float], size: int) -> None:
            merged = self.merge_stats(stats, self.share(size)[1])
            if self.rank == 0:
                fn(progress, merged, size)
            self.barrier("waiting for rank 0's logging, held-out evaluation and checkpoint")

        return after_batch

    def merge_stats(self, stats: dict[str, float], weight: int) -> dict[str, float]:
        """The batch statistics of all ranks, on rank 0 (others get their own back): means weighted by each
        rank's trajectory count, SUMMED_STATS summed, SHARED_STATS rank 0's."""
        everyone: list[Any] = [None] * self.world
        self.collective("gathering the batch statistics", dist.all_gather_object, everyone, (weight, stats))
        if self.rank != 0:
            return stats
        merged = {}
        for k in dict.fromkeys(k for _, s in everyone for k in s):
            have = [(w, s[k]) for w, s in everyone if k in s]
            if k in SHARED_STATS:
                merged[k] = have[0][1]
            elif k in SUMMED_STATS:
                merged[k] = sum(v for _, v in have)
            else:
                merged[k] = sum(w * v for w, v in have) / sum(w for w, _ in have)
        return merged


def _cpu(tree: Any) -> Any:
    """A state dict (nested dicts, lists, tuples of tensors) with every tensor copied to the CPU."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().cpu()
    if isinstance(tree, dict):
        return {k: _cpu(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_cpu(v) for v in tree)
    return tree


def threads_per_rank(local_world: int) -> int:
    """The cores this process may use, shared by the ranks on this node (at least 1)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // local_world)


def _env_int(name: str, default: str | None = None) -> int:
    try:
        return int(os.environ[name] if default is None else os.environ.get(name, default))
    except (KeyError, ValueError):
        raise ConfigError(f"WORLD_SIZE is set but {name} is missing or not an integer; launch with torchrun "
                          "(see the README, 'Distributed meta-training')") from None


def _timeout() -> datetime.timedelta:
    text = os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT))
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < 10**7:
        raise ConfigError(f"{TIMEOUT_ENV} must be a positive number of seconds, got {text!r}")
    return datetime.timedelta(seconds=seconds)


def _wait_for_master(rank: int, world: int, timeout: datetime.timedelta) -> None:
    """Return once MASTER_ADDR:MASTER_PORT accepts a connection; DistributedError (one line) if it does not
    within `timeout` (a connection is attempted every 0.1 s: the master may start later than this rank)."""
    addr, port = os.environ.get("MASTER_ADDR", "127.0.0.1"), _env_int("MASTER_PORT", "29500")
    deadline = time.monotonic() + timeout.total_seconds()
    while True:
        try:
            with socket.create_connection((addr, port), timeout=max(0.1, min(1.0, deadline - time.monotonic()))):
                return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise DistributedError(
                    f"rank {rank} of {world}: no master at {addr}:{port} after {timeout.total_seconds():g} s "
                    f"({e.strerror or e}); start rank 0 (torchrun does), or check MASTER_ADDR/MASTER_PORT and "
                    f"{TIMEOUT_ENV}") from None
        time.sleep(0.1)


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Hold what C++ code writes to file descriptor 2 during the block; replay it if the block succeeds, drop
    it if it raises (the exception then says why in one line)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            raise
        else:
            os.dup2(saved, 2)
            held.seek(0)
            text = held.read()
            if text:
                os.write(2, text)
        finally:
            os.close(saved)


@contextlib.contextmanager
def from_env(device: str | torch.device = "cpu") -> Iterator[Solo]:
    """The communicator torchrun's environment asks for (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE,
    MASTER_ADDR, MASTER_PORT): `Solo(device)` without it or with WORLD_SIZE=1; else this process joins the
    group (gloo for the CPU; nccl for CUDA, on GPU cuda:LOCAL_RANK), sets torch's threads to its share of the
    node's cores, and leaves the group at the end. A group the caller initialized is used and kept."""
    world = _env_int("WORLD_SIZE", "1")
    if world <= 1:
        yield Solo(str(device))
        return
    rank, local_rank = _env_int("RANK"), _env_int("LOCAL_RANK", "0")
    cuda = torch.device(device).type == "cuda"
    if cuda:
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {local_rank} needs GPU cuda:{local_rank}, but this node has "
                              f"{torch.cuda.device_count()}; start at most that many ranks per node")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    torch.set_num_threads(threads_per_rank(_env_int("LOCAL_WORLD_SIZE", str(world))))
    own = not dist.is_initialized()
    if own:
        # torch 2.13 pins the default group when torch._dynamo is first imported after the group exists (the first
        # torch.optim optimizer imports it); destroy_process_group then cannot free it, and gloo's threads live
        # on into interpreter shutdown, which now and then aborts a rank that had finished cleanly (SIGABRT,
        # "terminate called without an active exception"). Imported first, it leaves the group alone.
        importlib.import_module("torch._dynamo")
        where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
        timeout = _timeout()
        if rank != 0:  # rank 0 may be the one that listens; the others wait for it, but no longer than the timeout
            _wait_for_master(rank, world, timeout)
        try:
            with _quiet_stderr():  # c10d's retry messages (a dozen lines) would bury the one line that says why
                dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world, timeout=timeout,
                                        device_id=device if cuda else None)
        except (RuntimeError, ValueError) as e:
            raise DistributedError(f"rank {rank} of {world} cannot join the process group at {where} "
                                   f"({str(e).strip().splitlines()[0][:300]})") from None
    try:
        yield Collective(str(device), dist.get_rank(), dist.get_world_size())
    finally:
        if own:
            dist.destroy_process_group()
