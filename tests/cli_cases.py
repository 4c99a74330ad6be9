"""The table-driven command-line cases shared by the concept test files (test_training_outputs.py,
test_nonfinite.py, test_storage.py, test_cli_errors.py, test_checkpoints.py, test_signals.py, test_compare.py,
test_resources.py): one `Case` per row, the building blocks rows are made of, and `run_case`.

Every row runs `metatele` once (in-process through `cli.main`, or as a real process where signals, locks held
by another process or kernel limits are the point) in a fresh directory and asserts: the exit code, at most 3
lines on stderr, no "Traceback" anywhere, a phrase of the expected message, and that every file that existed
before the run is byte-identical afterwards (except the files a row says it may change, e.g. a resumed
training state).

Privileges: as root, file permissions do not stop writes, so the permission rows drop to uid/gid 65534
(`os.seteuid`) for the run; the read-only-file-system row uses /sys, which the kernel refuses to anyone.
A full disk is simulated by replacing the one writer of bytes (`metatele.io.atomic._write_bytes`) with one that
writes half and raises ENOSPC; a real kernel write limit (RLIMIT_FSIZE, EFBIG) is exercised in a child process.
No pass condition depends on time: processes are signalled on events (a file written, a line printed, torch's
library mapped), and the waits are bounded only against hangs (helpers.HANG).
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import HANG, popen_cli, wait_for, wait_for_write
from safetensors.torch import save_file

from metatele import checkpoints, cli, train
from metatele.evaluation import compare
from metatele.io import LOCK_NAME, atomic
from metatele.methods import baseline
from metatele.outer import trainer
from metatele.repdyn import paper as repdyn_paper

SETS = ["--set", "trajectories=16", "--set", "batch=8", "--set", "steps=10", "--set", "hidden=8",
        "--set", "eval_tasks=4", "--set", "eval_every=1", "--set", "ckpt_every=1"]
TRAIN = ["--no-progress", *SETS]  # a 2-batch training; a `partial` state has done batch 1 of it
LONG = ["--no-progress", "--set", "hidden=8", "--set", "trajectories=4000", "--set", "batch=4", "--set", "steps=10",
        "--set", "eval_every=0", "--set", "ckpt_every=1"]
SLOW = ["--no-progress", "--set", "hidden=32", "--set", "trajectories=4000", "--set", "batch=8", "--set", "steps=100",
        "--set", "eval_every=0", "--set", "ckpt_every=1"]
EVAL = ["--tasks", "2", "--steps", "2", "--no-progress", "--out", "res", "--logdir", "tb"]
ARCH = ["train", "--out", "o", *TRAIN]  # a training refused by a check before any work
NOBODY = 65534
DEAD_PID = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1  # larger than any PID: never alive
HOLDER = ("import sys, time; from metatele.io import OutputLock; OutputLock(sys.argv[1]).__enter__(); "
          f"print('locked', flush=True); time.sleep({HANG})")  # killed by the row's cleanup
Result = tuple[int, str, str]


@dataclass
class Case:
    name: str
    argv: list[str]
    code: int
    needle: str = ""                            # a phrase of stderr (for exit 2; else of stdout or stderr)
    setup: Callable[[Path, dict[str, Any]], None] | None = None
    patch: Callable[[pytest.MonkeyPatch, Path, dict[str, Any]], None] | None = None
    check: Callable[[Path, dict[str, Any], str, str], None] | None = None
    may_change: tuple[str, ...] = ()            # pre-existing files (relative paths) this row may change or remove
    unprivileged: bool = False                  # run as uid/gid 65534 if root (file permissions must apply)
    proc: Callable[[Path, dict[str, Any]], list[Result]] | None = None  # real processes instead of cli.main


# ---------------------------------------------------------------- building blocks for the rows
def put(name: str, src: str = "partial") -> Callable[[Path, dict[str, Any]], None]:
    """Setup: a copy of a made checkpoint directory at tmp/name."""
    def setup(tmp: Path, ctx: dict[str, Any]) -> None:
        shutil.copytree(ctx["made"][src], tmp / name)
    return setup


def ship(tmp: Path, ctx: dict[str, Any]) -> None:
    """Setup: a shipped pretrained checkpoint in tmp/ship."""
    (tmp / "ship").mkdir()
    shutil.copy(checkpoints.pretrained_dir() / "lstm-update" / checkpoints.MODEL_FILE, tmp / "ship")


def crafted(file: str, meta_fn: Callable[[dict], Any] | None = None,
            tensor_fn: Callable[[dict[str, torch.Tensor]], None] | None = None, src: str = "full",
            raw_meta: str | None = None) -> Callable[[Path, dict[str, Any]], None]:
    """Setup: tmp/ck/<file> rewritten with altered metadata or tensors, bypassing the writer's own checks
    (as a hostile or buggy producer would)."""
    def setup(tmp: Path, ctx: dict[str, Any]) -> None:
        shutil.copytree(ctx["made"][src], tmp / "ck")
        tensors, meta = checkpoints.read(tmp / "ck" / file)
        if tensor_fn:
            tensor_fn(tensors)
        if meta_fn:
            meta_fn(meta)  # changes meta in place
        text = raw_meta if raw_meta is not None else json.dumps(meta)
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / "ck" / file), metadata={"metatele": text})
    return setup


def spec_set(**kw: Any) -> Callable[[dict], None]:
    return lambda meta: meta["spec"].update(kw)


def write(name: str, data: str | bytes = "x") -> Callable[[Path, dict[str, Any]], None]:
    def setup(tmp: Path, ctx: dict[str, Any]) -> None:
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_bytes(data.encode() if isinstance(data, str) else data)
    return setup


def fifo(name: str) -> Callable[[Path, dict[str, Any]], None]:
    return lambda tmp, ctx: os.mkfifo(tmp / name)


def both(*setups: Callable[[Path, dict[str, Any]], None]) -> Callable[[Path, dict[str, Any]], None]:
    def setup(tmp: Path, ctx: dict[str, Any]) -> None:
        for s in setups:
            s(tmp, ctx)
    return setup


def read_only_dir(name: str) -> Callable[[Path, dict[str, Any]], None]:
    """Setup: tmp/name, holding earlier work, that the (unprivileged) run may not write to."""
    def setup(tmp: Path, ctx: dict[str, Any]) -> None:
        (tmp / name).mkdir()
        (tmp / name / "keep.txt").write_text("earlier work")
        os.chmod(tmp / name, 0o555)
        ctx["cleanup"].append(lambda: os.chmod(tmp / name, 0o755))
        ctx["allowed_anyway"] = lambda: os.access(tmp / name, os.W_OK, effective_ids=True)
    return setup


def no_read(name: str) -> Callable[[Path, dict[str, Any]], None]:
    """Setup: tmp/name may not be read by the (unprivileged) run."""
    def setup(tmp: Path, ctx: dict[str, Any]) -> None:
        os.chmod(tmp / name, 0o000)
        ctx["cleanup"].append(lambda: os.chmod(tmp / name, 0o644))
        ctx["allowed_anyway"] = lambda: os.access(tmp / name, os.R_OK, effective_ids=True)
    return setup


@contextlib.contextmanager
def unprivileged() -> Iterator[None]:
    """Run as uid/gid 65534 when root (so that permission bits apply); as an ordinary user, as is."""
    if os.geteuid() != 0:
        yield
        return
    os.setegid(NOBODY)
    os.seteuid(NOBODY)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


def enospc(mp: pytest.MonkeyPatch, tmp: Path, ctx: dict[str, Any]) -> None:
    """A full disk: every atomic write of bytes writes half its data and fails with ENOSPC."""
    def full(path: str, data: bytes) -> None:
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
    mp.setattr(atomic, "_write_bytes", full)


def poison_batch_2(mp: pytest.MonkeyPatch, tmp: Path, ctx: dict[str, Any]) -> None:
    """Meta-parameters become NaN during batch 2 (after batch 1 was checkpointed): snapshot what is on disk
    then, so the row can check that it is kept."""
    real = trainer.train_batch

    def train_batch(method: Any, *args: Any, **kw: Any) -> dict[str, float]:
        stats = real(method, *args, **kw)
        ctx["calls"] = ctx.get("calls", 0) + 1
        if ctx["calls"] == 2:
            ctx["after_batch_1"] = {k: v for k, v in snapshot(tmp / "o").items() if k != LOCK_NAME}
            with torch.no_grad():
                next(method.parameters()).fill_(float("nan"))
        return stats
    mp.setattr(trainer, "train_batch", train_batch)


def cheap_baselines(mp: pytest.MonkeyPatch, tmp: Path, ctx: dict[str, Any]) -> None:
    """compare without its lr grid search (not what these rows test): GD at the paper's lr only."""
    mp.setattr(compare, "baselines", lambda valid, steps, cache=None: [compare.Entry(baseline("gd"), {"lr": 3e-4})])


def snapshot(root: Path) -> dict[str, bytes]:
    """Every regular file under root (relative path → bytes); FIFOs and devices are skipped."""
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = Path(d) / f
            if p.is_file() and not p.is_symlink():
                out[str(p.relative_to(root))] = p.read_bytes()
    return out


def state_of(path: Path) -> train.Run:
    return train.restore(path / checkpoints.STATE_FILE)


def finite_checkpoint(path: Path) -> None:
    model = checkpoints.load_model(path)
    assert all(torch.isfinite(p).all() for p in model.parameters())


# ---------------------------------------------------------------- rows that need real processes
def sigterm_saves(tmp: Path, ctx: dict[str, Any]) -> list[Result]:
    p = popen_cli("train", "--out", "o", "--logdir", "tb", *LONG, cwd=tmp)
    assert wait_for_write(tmp / "o" / checkpoints.STATE_FILE, proc=p)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=HANG)
    return [(p.returncode, out, err)]


def loading_torch(pid: int) -> bool:
    """Whether process `pid` has begun to load torch's shared library (it is inside `import torch`)."""
    with contextlib.suppress(OSError):
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    return False


def sigint_during_startup(tmp: Path, ctx: dict[str, Any]) -> list[Result]:
    """Ctrl-C while torch is being imported (seen in /proc/PID/maps), and once --out exists but before the
    first batch is saved (the meta-optimizer and held-out tasks are being built)."""
    a = popen_cli("train", "--out", "a", "--logdir", "tb", *LONG, cwd=tmp)
    b = popen_cli("train", "--out", "b", "--logdir", "tb", *SLOW, cwd=tmp)  # its first batch takes a while
    wait_for(lambda: loading_torch(a.pid), a)
    a.send_signal(signal.SIGINT)
    wait_for(lambda: (tmp / "b").exists(), b)
    b.send_signal(signal.SIGINT)
    results = []
    for p in (a, b):
        out, err = p.communicate(timeout=HANG)
        results.append((p.returncode, out, err))
    ctx["before_training"] = not (tmp / "a").exists() and not (tmp / "b" / checkpoints.STATE_FILE).exists()
    return results


def sigint_twice(tmp: Path, ctx: dict[str, Any]) -> list[Result]:
    """The first Ctrl-C asks for a graceful stop after the batch; a second one during that batch aborts at once.
    The first comes once batch 1's model file is written (batch 2 has begun; it takes about a second here:
    hidden 32, 8 trajectories of 100 steps), the second as soon as the process has said it will stop."""
    p = popen_cli("train", "--out", "o", "--logdir", "tb", *SLOW, cwd=tmp)
    assert wait_for_write(tmp / "o" / checkpoints.MODEL_FILE, proc=p)
    p.send_signal(signal.SIGINT)
    seen = []
    while not seen or "stopping after the current batch" not in seen[-1]:  # EOF ('') if it exits instead
        seen.append(p.stderr.readline())
        if not seen[-1]:
            break
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=HANG)
    assert "interrupted; saved" not in out, "the batch ended before the second Ctrl-C: nothing was aborted"
    return [(p.returncode, out, "".join(seen) + err)]


def second_training_refused(tmp: Path, ctx: dict[str, Any]) -> list[Result]:
    """A real training runs in --out o; a second one into o (in this process) must be refused at once."""
    p = popen_cli("train", "--out", "o", "--logdir", "tb", *LONG, cwd=tmp)
    try:
        assert wait_for_write(tmp / "o" / checkpoints.STATE_FILE, proc=p)
        ctx["pid"] = p.pid
        second = run_in_process(["train", "--out", "o", "--logdir", "tb2", *LONG], ctx["capsys"])
    finally:
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=HANG)
    assert p.returncode == 143, err  # the first one was not disturbed
    return [second]


def file_size_limit(tmp: Path, ctx: dict[str, Any]) -> list[Result]:
    """A real kernel write error: RLIMIT_FSIZE of 64 KiB makes the checkpoint write fail with EFBIG."""
    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get the error instead of the signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
    r = subprocess.run([sys.executable, "-m", "metatele", "train", "--out", "o", "--logdir", "tb", "--resume", *TRAIN],
                       cwd=tmp, capture_output=True, text=True, timeout=HANG, preexec_fn=limit,
                       env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"})
    return [(r.returncode, r.stdout, r.stderr)]


def holder_killed(tmp: Path, ctx: dict[str, Any]) -> None:
    """Setup: a process took the lock on tmp/o and was killed (SIGKILL) while holding it."""
    put("o")(tmp, ctx)
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp / "o")], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    p.kill()
    p.wait()
    assert (tmp / "o" / LOCK_NAME).exists()  # left behind, naming a dead process


def holder_alive(tmp: Path, ctx: dict[str, Any]) -> None:
    """Setup: another process holds the lock on tmp/o."""
    put("o")(tmp, ctx)
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp / "o")], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    ctx["pid"] = p.pid
    ctx["cleanup"].append(lambda: (p.kill(), p.wait()))


def strays(tmp: Path, ctx: dict[str, Any]) -> None:
    """Setup: a partial training in tmp/o with temporary files of interrupted writes (writer dead, of an older
    version without PIDs), one of a live writer, and a file of the user's that merely looks similar."""
    put("o")(tmp, ctx)
    for name in (f".model.safetensors.{DEAD_PID}.abcd1234.tmp", f".train_state.safetensors.{DEAD_PID}.zz_zz_zz.tmp",
                 ".model.safetensors.q1w2e3r4.tmp", f".model.safetensors.{os.getpid()}.live1234.tmp", "notes.tmp"):
        (tmp / "o" / name).write_bytes(b"half a checkpoint")


# ---------------------------------------------------------------- checks
def refused_before_writing(name: str) -> Callable[[Path, dict[str, Any], str, str], None]:
    return lambda tmp, ctx, out, err: None if not (tmp / name).exists() else pytest.fail(f"{name} was created")


def wrote_nothing(tmp: Path, ctx: dict[str, Any], out: str, err: str) -> None:
    assert not list(tmp.iterdir()), sorted(p.name for p in tmp.iterdir())


def resumed_to_batch_2(tmp: Path, ctx: dict[str, Any], out: str, err: str) -> None:
    assert state_of(tmp / "o").progress.batches_done == 2
    finite_checkpoint(tmp / "o")


def strays_cleaned(tmp: Path, ctx: dict[str, Any], out: str, err: str) -> None:
    left = sorted(p.name for p in (tmp / "o").iterdir() if p.name.endswith(".tmp"))
    assert left == [f".model.safetensors.{os.getpid()}.live1234.tmp", "notes.tmp"], left
    resumed_to_batch_2(tmp, ctx, out, err)


def no_temp_files(tmp: Path, ctx: dict[str, Any], out: str, err: str) -> None:
    left = [str(p) for p in tmp.rglob("*.tmp")]
    assert not left, left


def kept_after_batch_1(tmp: Path, ctx: dict[str, Any], out: str, err: str) -> None:
    assert snapshot(tmp / "o") == ctx["after_batch_1"]  # nothing written after the parameters went NaN
    assert state_of(tmp / "o").progress.batches_done == 1
    finite_checkpoint(tmp / "o")


def sigterm_checked(tmp: Path, ctx: dict[str, Any], out: str, err: str) -> None:
    assert "interrupted; saved" in out
    assert state_of(tmp / "o").progress.batches_done > 0
    finite_checkpoint(tmp / "o")


def names_holder(tmp: Path, ctx: dict[str, Any], out: str, err: str) -> None:
    assert f"PID {ctx['pid']}" in err, err


def no_work(mp: pytest.MonkeyPatch, tmp: Path, ctx: dict[str, Any]) -> None:
    """Patch: record it if the long work of compare/eval (building the test tasks) or of repdyn starts."""
    def started(name: str) -> Callable[..., Any]:
        def record(*args: Any, **kw: Any) -> Any:
            ctx.setdefault("work", []).append(name)
            raise AssertionError(f"{name} started: the refusal came too late")
        return record
    mp.setattr(compare, "test_tasks", started("compare.test_tasks"))
    mp.setattr(repdyn_paper, "main", started("repdyn"))


def before_work(tmp: Path, ctx: dict[str, Any], out: str, err: str) -> None:
    assert not ctx.get("work"), ctx.get("work")


def warned_once(tmp: Path, ctx: dict[str, Any], out: str, err: str) -> None:
    assert sum("warning" in line for line in err.splitlines()) == 1 and "| gd |" in out


def loaded_overwrite(tmp: Path, ctx: dict[str, Any], out: str, err: str) -> None:
    assert checkpoints.load_model(tmp / "ship").spec.hidden == 8  # the new training's, not the shipped one's
    assert state_of(tmp / "ship").progress.batches_done == 2


def run_in_process(argv: list[str], capsys: pytest.CaptureFixture, unpriv: bool = False) -> Result:
    """cli.main(argv) in this process, with an alarm against hangs (a blocking read of a FIFO would hang)."""
    def alarm(signum: int, frame: Any) -> None:
        raise TimeoutError(f"metatele blocked for {HANG:g} s")
    capsys.readouterr()
    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(int(HANG))
    try:
        with unprivileged() if unpriv else contextlib.nullcontext():
            try:
                code = cli.main(argv)
            except SystemExit as e:  # argparse
                code = int(e.code or 0)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_case(case: Case, made: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
             capsys: pytest.CaptureFixture) -> None:
    """Run one row (see the module docstring)."""
    tmp = Path(tempfile.mkdtemp(prefix="metatele-reliability-"))
    os.chmod(tmp, 0o777)  # usable by the unprivileged user of the permission rows
    ctx: dict[str, Any] = {"made": made, "cleanup": [], "capsys": capsys}
    monkeypatch.chdir(tmp)
    try:
        if case.setup:
            case.setup(tmp, ctx)
        if case.unprivileged:
            with unprivileged():
                if ctx["allowed_anyway"]():
                    pytest.skip("permission bits do not bind this process (a capability): nothing to test")
        before = snapshot(tmp)
        if case.patch:
            case.patch(monkeypatch, tmp, ctx)
        results = case.proc(tmp, ctx) if case.proc else [run_in_process(case.argv, capsys, case.unprivileged)]
        monkeypatch.undo()
        for code, out, err in results:
            assert code == case.code, f"exit {code}, expected {case.code}; stderr: {err}"
            assert len(err.strip().splitlines()) <= 3, err
            assert "Traceback" not in err and "Traceback" not in out, err
            assert case.needle in (err if case.code == 2 else out + err), f"{case.needle!r} not in: {out + err}"
        for rel, data in before.items():
            if rel not in case.may_change:
                assert (tmp / rel).read_bytes() == data, f"{rel} was changed"
        if case.check:
            case.check(tmp, ctx, *results[-1][1:])
    finally:
        for undo in ctx["cleanup"]:
            undo()
        shutil.rmtree(tmp, ignore_errors=True)


def ids(cases: list[Case]) -> list[str]:
    assert len({c.name for c in cases}) == len(cases)
    return [c.name for c in cases]
