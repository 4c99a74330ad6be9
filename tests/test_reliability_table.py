"""Reliability, round 2 (issue 18), table-driven: one row per case.

Every row runs `metatele` once (in-process through `cli.main`, or as a real process where signals, locks held
by another process or kernel limits are the point) in a fresh directory and asserts: the exit code, at most 3
lines on stderr, no "Traceback" anywhere, a phrase of the expected message, and that every file that existed
before the run is byte-identical afterwards (except the files a row says it may change, e.g. a resumed
training state). Rows are grouped by the issue's classes 1-7 (`Case.cls`).

Privileges: as root, file permissions do not stop writes, so the permission rows drop to uid/gid 65534
(`os.seteuid`) for the run; the read-only-file-system row uses /sys, which the kernel refuses to anyone.
A full disk is simulated by replacing the one writer of bytes (`metatele.io.atomic._write_bytes`) with one that writes
half and raises ENOSPC; a real kernel write limit (RLIMIT_FSIZE, EFBIG) is exercised in a child process.
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
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import ROOT, popen_cli, wait_for_write
from safetensors.torch import save_file

from metatele import checkpoints, cli, config, train
from metatele.io import LOCK_NAME, atomic
from metatele.errors import NonFiniteError
from metatele.evaluation import compare
from metatele.outer import trainer
from metatele.methods import baseline

SETS = ["--set", "trajectories=16", "--set", "batch=8", "--set", "steps=10", "--set", "hidden=8",
        "--set", "eval_tasks=4", "--set", "eval_every=1", "--set", "ckpt_every=1"]
TRAIN = ["--no-progress", *SETS]  # a 2-batch training; a `partial` state has done batch 1 of it
LONG = ["--no-progress", "--set", "hidden=8", "--set", "trajectories=4000", "--set", "batch=4", "--set", "steps=10",
        "--set", "eval_every=0", "--set", "ckpt_every=1"]
SLOW = ["--no-progress", "--set", "hidden=32", "--set", "trajectories=4000", "--set", "batch=8", "--set", "steps=100",
        "--set", "eval_every=0", "--set", "ckpt_every=1"]
EVAL = ["--tasks", "2", "--steps", "2", "--no-progress", "--out", "res", "--logdir", "tb"]
NOBODY = 65534
DEAD_PID = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1  # larger than any PID: never alive
HOLDER = ("import sys, time; from metatele.io import OutputLock; OutputLock(sys.argv[1]).__enter__(); "
          "print('locked', flush=True); time.sleep(120)")
Result = tuple[int, str, str]


@dataclass
class Case:
    name: str
    cls: int                                    # the class (1-7)
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
@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """These models are tiny: one intra-op thread is faster, and far faster on a shared, busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    """A finished 2-batch training ("full") and one stopped after batch 1 ("partial"), of the TRAIN config."""
    d = tmp_path_factory.mktemp("made")
    cfg = config.load(None, SETS[1::2])
    train.run(cfg, d / "full", progress=False)
    train.run(cfg, d / "partial", progress=False, max_batches=1)
    return {"full": d / "full", "partial": d / "partial"}


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
    mp.setattr(compare, "baselines", lambda valid, steps: [compare.Entry(baseline("gd"), {"lr": 3e-4})])


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
    assert wait_for_write(tmp / "o" / checkpoints.STATE_FILE)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    return [(p.returncode, out, err)]


def wait_until(ready: Callable[[], bool], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def loading_torch(pid: int) -> bool:
    """Whether process `pid` has begun to load torch's shared library (it is inside `import torch`)."""
    with contextlib.suppress(OSError):
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    return False


def sigint_during_startup(tmp: Path, ctx: dict[str, Any]) -> list[Result]:
    """Ctrl-C while torch is being imported (seen in /proc/PID/maps), and once --out exists but before the
    first batch is saved (the meta-optimizer and held-out tasks are being built)."""
    a = popen_cli("train", "--out", "a", "--logdir", "tb", *LONG, cwd=tmp)
    b = popen_cli("train", "--out", "b", "--logdir", "tb", *LONG, cwd=tmp)
    wait_until(lambda: loading_torch(a.pid))
    a.send_signal(signal.SIGINT)
    wait_until(lambda: (tmp / "b").exists())
    b.send_signal(signal.SIGINT)
    results = []
    for p in (a, b):
        out, err = p.communicate(timeout=120)
        results.append((p.returncode, out, err))
    ctx["before_training"] = not (tmp / "a").exists() and not (tmp / "b" / checkpoints.STATE_FILE).exists()
    return results


def sigint_twice(tmp: Path, ctx: dict[str, Any]) -> list[Result]:
    """The first Ctrl-C asks for a graceful stop after the batch; a second one during that batch aborts at once.
    Both come while batch 2 runs (it starts once batch 1's model file is written; a batch takes about a second
    here: hidden 32, 8 trajectories of 100 steps)."""
    p = popen_cli("train", "--out", "o", "--logdir", "tb", *SLOW, cwd=tmp)
    assert wait_for_write(tmp / "o" / checkpoints.MODEL_FILE)
    time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    time.sleep(0.2)  # two signals sent at once would merge into one
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert "interrupted; saved" not in out, "the batch ended before the second Ctrl-C: nothing was aborted"
    return [(p.returncode, out, err)]


def second_training_refused(tmp: Path, ctx: dict[str, Any]) -> list[Result]:
    """A real training runs in --out o; a second one into o (in this process) must be refused at once."""
    p = popen_cli("train", "--out", "o", "--logdir", "tb", *LONG, cwd=tmp)
    try:
        assert wait_for_write(tmp / "o" / checkpoints.STATE_FILE)
        ctx["pid"] = p.pid
        second = run_in_process(["train", "--out", "o", "--logdir", "tb2", *LONG], ctx["capsys"])
    finally:
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=120)
    assert p.returncode == 143, err  # the first one was not disturbed
    return [second]


def file_size_limit(tmp: Path, ctx: dict[str, Any]) -> list[Result]:
    """A real kernel write error: RLIMIT_FSIZE of 64 KiB makes the checkpoint write fail with EFBIG."""
    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get the error instead of the signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
    r = subprocess.run([sys.executable, "-m", "metatele", "train", "--out", "o", "--logdir", "tb", "--resume", *TRAIN],
                       cwd=tmp, capture_output=True, text=True, timeout=120, preexec_fn=limit,
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


def quick(tmp: Path, ctx: dict[str, Any], out: str, err: str) -> None:
    assert ctx["seconds"] < 10, f"refused only after {ctx['seconds']:.1f} s"


def warned_once(tmp: Path, ctx: dict[str, Any], out: str, err: str) -> None:
    assert sum("warning" in line for line in err.splitlines()) == 1 and "| gd |" in out


def loaded_overwrite(tmp: Path, ctx: dict[str, Any], out: str, err: str) -> None:
    assert checkpoints.load_model(tmp / "ship").spec.hidden == 8  # the new training's, not the shipped one's
    assert state_of(tmp / "ship").progress.batches_done == 2


# ---------------------------------------------------------------- the table
ARCH = ["train", "--out", "o", *TRAIN]
CASES = [
    # 1. no silent data loss
    Case("out_holding_a_shipped_model_is_refused", 1, ["train", "--out", "ship", *TRAIN], 2,
         "ship already holds model.safetensors", setup=ship),
    Case("out_holding_a_training_state_is_refused_without_resume", 1, ["train", "--out", "o", *TRAIN], 2,
         "--resume to continue", setup=put("o", "full")),
    Case("overwrite_flag_replaces_it_explicitly", 1, ["train", "--out", "ship", "--overwrite", *TRAIN], 0,
         "done: 16/16", setup=ship, check=loaded_overwrite, may_change=("ship/model.safetensors",)),
    Case("resume_of_the_matching_state_continues", 1, ["train", "--out", "o", "--resume", *TRAIN], 0, "done: 16/16",
         setup=put("o"), check=resumed_to_batch_2,
         may_change=("o/model.safetensors", "o/train_state.safetensors")),
    Case("resume_without_any_state_is_refused", 1, ["train", "--out", "o", "--resume", *TRAIN], 2,
         "holds no training state", check=refused_before_writing("o")),
    Case("resume_with_only_a_model_is_refused", 1, ["train", "--out", "ship", "--resume", *TRAIN], 2,
         "holds no training state", setup=ship),
    Case("resume_and_overwrite_together_are_refused", 1, ["train", "--out", "o", "--resume", "--overwrite", *TRAIN],
         2, "not allowed with argument --resume"),
    Case("lock_held_by_another_process_refuses", 1, ["train", "--out", "o", "--resume", *TRAIN], 2,
         "in use by another training", setup=holder_alive, check=names_holder),
    Case("second_real_training_into_the_same_out_is_refused", 1, [], 2, "in use by another training (PID",
         proc=second_training_refused, check=names_holder),
    Case("stale_lock_of_a_killed_process_is_taken_over", 1, ["train", "--out", "o", "--resume", *TRAIN], 0,
         "done: 16/16", setup=holder_killed, check=resumed_to_batch_2,
         may_change=("o/model.safetensors", "o/train_state.safetensors", f"o/{LOCK_NAME}")),
    Case("stray_temporary_files_are_cleaned", 1, ["train", "--out", "o", "--resume", *TRAIN], 0, "done: 16/16",
         setup=strays, check=strays_cleaned,
         may_change=("o/model.safetensors", "o/train_state.safetensors",
                     f"o/.model.safetensors.{DEAD_PID}.abcd1234.tmp",
                     f"o/.train_state.safetensors.{DEAD_PID}.zz_zz_zz.tmp", "o/.model.safetensors.q1w2e3r4.tmp")),
    Case("stray_temporary_files_in_a_results_folder_are_cleaned", 1, ["eval", "--checkpoint", "ck", *EVAL], 0,
         "wrote res/results.csv", setup=both(put("ck", "full"), write(f"res/.results.csv.{DEAD_PID}.abcd1234.tmp")),
         check=lambda tmp, ctx, out, err: no_temp_files(tmp, ctx, out, err),
         may_change=(f"res/.results.csv.{DEAD_PID}.abcd1234.tmp",)),
    Case("sigterm_finishes_the_batch_saves_and_exits_143", 1, [], 143, "interrupted; saved", proc=sigterm_saves,
         check=sigterm_checked),
    # 2. NaN and inf never reach the disk
    Case("meta_lr_inf_is_refused", 2, ARCH + ["--set", "meta_lr=inf"], 2, "meta_lr must be a number in (0, 10]"),
    Case("meta_lr_overflowing_to_inf_is_refused", 2, ARCH + ["--set", "meta_lr=1e400"], 2, "got inf"),
    Case("meta_lr_that_overflows_float32_is_refused", 2, ARCH + ["--set", "meta_lr=1e38"], 2, "(0, 10]"),
    Case("magnitude_nan_is_refused", 2, ARCH + ["--set", "magnitude=nan"], 2, "finite positive number, got nan"),
    Case("clip_inf_in_toml_is_refused", 2, ["train", "--out", "o", "--config", "c.toml", *TRAIN], 2,
         "clip must be a finite positive number, got inf", setup=write("c.toml", "clip = inf\n")),
    Case("nonfinite_meta_parameters_stop_and_keep_the_last_checkpoint", 2, ARCH, 2,
         "meta-parameters became non-finite in batch 2", patch=poison_batch_2, check=kept_after_batch_1),
    Case("nonfinite_tensor_in_a_training_state_is_refused_on_resume", 2,
         ["train", "--out", "ck", "--resume", *TRAIN], 2, "holds NaN or inf",
         setup=crafted(checkpoints.STATE_FILE, src="partial",
                       tensor_fn=lambda t: t[next(iter(t))].fill_(float("inf")))),
    Case("nan_in_the_history_of_a_training_state_is_refused_on_resume", 2,
         ["train", "--out", "ck", "--resume", *TRAIN], 2, "history must be",
         setup=crafted(checkpoints.STATE_FILE, meta_fn=lambda m: m["history"][0].update(x=float("nan")),
                       src="partial")),
    Case("nan_weights_in_a_model_are_refused", 2, ["eval", "--checkpoint", "ck", *EVAL], 2, "holds NaN or inf",
         setup=crafted(checkpoints.MODEL_FILE, tensor_fn=lambda t: t[next(iter(t))].view(-1)[0].fill_(float("nan")))),
    # 3. operating-system errors: one line, exit 2, earlier work kept
    Case("full_disk_while_checkpointing_keeps_the_earlier_checkpoint", 3, ["train", "--out", "o", "--resume", *TRAIN],
         2, "No space left on device", setup=put("o"), patch=enospc, check=no_temp_files),
    Case("full_disk_while_writing_results_keeps_the_earlier_results", 3, ["eval", "--checkpoint", "ck", *EVAL], 2,
         "No space left on device", setup=both(put("ck", "full"), write("res/results.csv", "old results\n")),
         patch=enospc, check=no_temp_files),
    Case("file_size_limit_of_the_kernel_efbig", 3, [], 2, "File too large", setup=put("o"), proc=file_size_limit,
         check=no_temp_files),
    Case("read_only_folder_for_out", 3, ["train", "--out", "ro/o", *TRAIN], 2, "Permission denied",
         setup=read_only_dir("ro"), unprivileged=True),
    Case("read_only_folder_for_logdir", 3, ["train", "--out", "o", "--logdir", "ro/tb", *TRAIN], 2,
         "--logdir ro/tb: Permission denied", setup=read_only_dir("ro"), unprivileged=True,
         check=refused_before_writing("o")),
    Case("read_only_folder_for_eval_results", 3, ["eval", "--checkpoint", "ck", "--tasks", "2", "--steps", "2",
                                                  "--no-progress", "--out", "ro/res", "--logdir", "tb"], 2,
         "--out ro/res: Permission denied", setup=both(put("ck", "full"), read_only_dir("ro")), unprivileged=True),
    Case("permission_denied_reading_a_checkpoint", 3, ["eval", "--checkpoint", "ck/model.safetensors", *EVAL], 2,
         "Permission denied", setup=both(put("ck", "full"), no_read("ck/model.safetensors")), unprivileged=True),
    Case("permission_denied_reading_a_config", 3, ["train", "--out", "o", "--config", "c.toml", *TRAIN], 2,
         "Permission denied", setup=both(write("c.toml", "steps = 10\n"), no_read("c.toml")), unprivileged=True),
    Case("kernel_file_system_that_refuses_new_files", 3, ["train", "--out", "/sys/metatele-test", *TRAIN], 2,
         "--out /sys/metatele-test"),
    Case("out_that_is_a_file", 3, ["train", "--out", "afile", *TRAIN], 2, "is a file, not a directory",
         setup=write("afile")),
    Case("out_below_a_file", 3, ["train", "--out", "afile/o", *TRAIN], 2, "is a file, not a directory",
         setup=write("afile")),
    Case("logdir_that_is_a_file", 3, ["train", "--out", "o", "--logdir", "afile", *TRAIN], 2,
         "--logdir afile", setup=write("afile"), check=refused_before_writing("o")),
    Case("compare_out_that_is_a_file_before_tuning", 3, ["compare", "--tasks", "2", "--steps", "2", "--no-progress",
                                                         "--out", "afile", "--logdir", "tb"], 2,
         "--out afile", setup=write("afile"), check=quick),
    Case("name_too_long_for_out", 3, ["train", "--out", "x" * 300, *TRAIN], 2, "File name too long"),
    Case("name_too_long_for_logdir", 3, ["train", "--out", "o", "--logdir", "d/" + "y" * 300, *TRAIN], 2,
         "longer than 255 bytes"),
    Case("name_too_long_for_repdyn_json", 3, ["repdyn", "--quick", "--json", "z" * 300 + ".json", "--out", "rd"], 2,
         "--json", check=quick),
    Case("fifo_as_a_checkpoint_is_refused_at_once", 3, ["eval", "--checkpoint", "pipe", *EVAL], 2,
         "not a regular file", setup=fifo("pipe")),
    Case("fifo_inside_a_checkpoint_directory", 3, ["eval", "--checkpoint", "ck", *EVAL], 2, "not a regular file",
         setup=both(lambda tmp, ctx: (tmp / "ck").mkdir(), fifo("ck/model.safetensors"))),
    Case("device_file_as_a_checkpoint_is_refused_at_once", 3, ["eval", "--checkpoint", "/dev/zero", *EVAL], 2,
         "not a regular file"),
    Case("fifo_as_a_config_is_refused_at_once", 3, ["train", "--out", "o", "--config", "pipe", *TRAIN], 2,
         "not a regular file", setup=fifo("pipe")),
    Case("repdyn_json_that_is_a_directory_before_fitting", 3,
         ["repdyn", "--quick", "--json", "jdir", "--out", "rd", "--no-progress"], 2, "--json jdir is a directory",
         setup=lambda tmp, ctx: (tmp / "jdir").mkdir(), check=quick),
    Case("repdyn_json_below_a_file_before_fitting", 3,
         ["repdyn", "--quick", "--json", "afile/fits.json", "--out", "rd", "--no-progress"], 2, "is a file",
         setup=write("afile"), check=quick),
    Case("repdyn_json_that_is_a_fifo_before_fitting", 3,
         ["repdyn", "--quick", "--json", "pipe", "--out", "rd", "--no-progress"], 2, "not a regular file",
         setup=fifo("pipe"), check=quick),
    Case("repdyn_out_that_is_a_file_before_fitting", 3, ["repdyn", "--quick", "--out", "afile", "--no-progress"], 2,
         "--out afile", setup=write("afile"), check=quick),
    # 4. every integer and string range-checked before work starts
    Case("seed_out_of_range_states_the_range", 4, ARCH + ["--set", "seed=100"], 2, "seed must be in [0, 99]"),
    Case("negative_seed_states_the_range", 4, ARCH + ["--set", "seed=-1"], 2, "seed must be in [0, 99]"),
    Case("trajectories_above_the_per_seed_stride", 4, ARCH + ["--set", "trajectories=10000001"], 2,
         "trajectories must be in [1, 10000000]"),
    Case("first_seed_2_63_minus_1_is_accepted", 4,
         ["eval", "--checkpoint", "ck", "--first-seed", str(2**63 - 1), "--tasks", "1", "--steps", "1",
          "--no-progress", "--out", "res", "--logdir", "tb"], 0, "| lstm-update-tele |", setup=put("ck", "full")),
    Case("first_seed_range_end_beyond_2_63_minus_1", 4,
         ["eval", "--checkpoint", "ck", "--first-seed", str(2**63 - 1), *EVAL], 2, "2^63−1", setup=put("ck", "full")),
    Case("first_seed_2_63_is_refused", 4, ["compare", "--first-seed", str(2**63), *EVAL], 2,
         f"expected an integer in [0, {2**63 - 1}]"),
    Case("hidden_too_large", 4, ARCH + ["--set", "hidden=200000"], 2, "hidden must be in [1, 4096]"),
    Case("width_too_large", 4, ARCH + ["--set", "widths=20,5000,20"], 2, "each of widths must be"),
    Case("widths_whose_meta_optimizer_would_exhaust_memory", 4,
         ARCH + ["--method", "lstm-update", "--set", "widths=784,4000,10"], 2, "above the limit of 1e+08"),
    Case("too_many_layers", 4, ARCH + ["--set", "widths=" + ",".join(["4"] * 20)], 2, "3 to 17 layer widths"),
    Case("mixture_law_that_does_not_exist", 4, ARCH + ["--set", "task=mixture", "--set", "laws=paper,bogus"], 2,
         "unknown laws entry 'bogus'"),
    Case("mixture_width_range_reversed", 4, ARCH + ["--set", "task=mixture", "--set", "width_range=48,8"], 2,
         "low ≤ high"),
    Case("device_other_than_cpu_cuda_cuda_n", 4, ARCH + ["--device", "gpu0"], 2,
         "--device must be cpu, cuda or cuda:N"),
    Case("device_cuda_with_a_bad_index", 4, ["compare", "--device", "cuda:-1", *EVAL], 2,
         "--device must be cpu, cuda or cuda:N"),
    Case("float_for_an_int_in_widths_is_not_truncated", 4, ARCH + ["--set", "widths=[20.7,20,20]"], 2,
         "expects a list of int"),
    Case("float_for_an_int_in_toml_is_not_truncated", 4, ["train", "--out", "o", "--config", "c.toml", *TRAIN], 2,
         "expects int, got 100.0", setup=write("c.toml", "steps = 100.0\n")),
    Case("float_for_an_int_on_the_command_line", 4, ["compare", "--tasks", "2.5", *EVAL[2:]], 2,
         "expected an integer"),
    Case("string_for_a_bool_in_toml", 4, ["train", "--out", "o", "--config", "c.toml", *TRAIN], 2,
         "expects bool, got 'no'", setup=write("c.toml", 'exact = "no"\n')),
    Case("deeply_nested_toml", 4, ["train", "--out", "o", "--config", "c.toml", *TRAIN], 2, "nested too deeply",
         setup=write("c.toml", "steps = " + "[" * 100_000 + "]" * 100_000 + "\n")),
    Case("teleport_with_more_samples_than_width_names_options", 4,
         ARCH + ["--set", "widths=10,20,20", "--set", "n=20"], 2, "--set n=…"),
    Case("classification_widths_that_do_not_fit_the_dataset", 4,
         ARCH + ["--set", "task=classification", "--set", "dataset=digits", "--set", "widths=60,16,10"], 2,
         "(--set widths=…)"),
    Case("steps_not_a_multiple_of_unroll_names_options", 4, ARCH + ["--set", "steps=25"], 2, "--set unroll=…"),
    # 5. checkpoint metadata is untrusted input
    Case("metadata_hidden_200000_refused_before_allocation", 5, ["eval", "--checkpoint", "ck", *EVAL], 2,
         "hidden must be in [1, 4096], got 200000", setup=crafted(checkpoints.MODEL_FILE, spec_set(hidden=200000))),
    Case("metadata_exact_no_is_not_true", 5, ["eval", "--checkpoint", "ck", *EVAL], 2,
         "exact must be true or false, got 'no'", setup=crafted(checkpoints.MODEL_FILE, spec_set(exact="no"))),
    Case("metadata_width_float", 5, ["eval", "--checkpoint", "ck", *EVAL], 2, "got 20.5",
         setup=crafted(checkpoints.MODEL_FILE, spec_set(widths=[20.5, 20, 20]))),
    Case("metadata_magnitude_string", 5, ["eval", "--checkpoint", "ck", *EVAL], 2, "magnitude must be",
         setup=crafted(checkpoints.MODEL_FILE, spec_set(magnitude="0.1"))),
    Case("metadata_not_an_object", 5, ["eval", "--checkpoint", "ck", *EVAL], 2, "not a JSON object",
         setup=crafted(checkpoints.MODEL_FILE, raw_meta="[1, 2]")),
    Case("metadata_nested_too_deeply", 5, ["eval", "--checkpoint", "ck", *EVAL], 2, "unreadable metatele metadata",
         setup=crafted(checkpoints.MODEL_FILE, raw_meta="[" * 100_000 + "]" * 100_000)),
    Case("metadata_family_with_a_string_count", 5, ["eval", "--checkpoint", "ck", *EVAL], 2, "invalid task family",
         setup=crafted(checkpoints.MODEL_FILE, lambda m: m["family"].update(n="20"))),
    Case("integer_weight_tensor_is_refused", 5, ["eval", "--checkpoint", "ck", *EVAL], 2, "dtype torch.int64",
         setup=crafted(checkpoints.MODEL_FILE, tensor_fn=lambda t: t.update({k: t[k].long() for k in list(t)[:1]}))),
    Case("bool_weight_tensor_is_refused", 5, ["eval", "--checkpoint", "ck", *EVAL], 2, "dtype torch.bool",
         setup=crafted(checkpoints.MODEL_FILE, tensor_fn=lambda t: t.update({k: t[k] > 0 for k in list(t)[:1]}))),
    Case("train_state_missing_a_key", 5, ["train", "--out", "ck", "--resume", *TRAIN], 2, "metadata is invalid",
         setup=crafted(checkpoints.STATE_FILE, lambda m: m.pop("batches_done"), src="partial")),
    Case("train_state_negative_counter", 5, ["train", "--out", "ck", "--resume", *TRAIN], 2,
         "batches_done must be in [0, 2], got -1",
         setup=crafted(checkpoints.STATE_FILE, lambda m: m.update(batches_done=-1), src="partial")),
    Case("train_state_counter_beyond_the_run", 5, ["train", "--out", "ck", "--resume", *TRAIN], 2,
         "batches_done must be in [0, 2], got 7",
         setup=crafted(checkpoints.STATE_FILE, lambda m: m.update(batches_done=7), src="partial")),
    Case("train_state_counter_of_the_wrong_type", 5, ["train", "--out", "ck", "--resume", *TRAIN], 2,
         "batches_done must be an integer",
         setup=crafted(checkpoints.STATE_FILE, lambda m: m.update(batches_done="1"), src="partial")),
    Case("train_state_adam_shape_mismatch", 5, ["train", "--out", "ck", "--resume", *TRAIN], 2, "has shape",
         setup=crafted(checkpoints.STATE_FILE, src="partial", tensor_fn=lambda t: t.update(
             {k: torch.zeros(3) for k in [k for k in t if k.endswith("exp_avg")][:1]}))),
    Case("train_state_unexpected_tensor", 5, ["train", "--out", "ck", "--resume", *TRAIN], 2, "unexpected tensor",
         setup=crafted(checkpoints.STATE_FILE, src="partial",
                       tensor_fn=lambda t: t.update({"adam.x.y": torch.zeros(1)}))),
    Case("train_state_adam_settings_tampered", 5, ["train", "--out", "ck", "--resume", *TRAIN], 2,
         "adam_param_groups", setup=crafted(checkpoints.STATE_FILE, lambda m: m["adam_param_groups"][0].update(lr=5.0),
                                            src="partial")),
    # 6. SIGINT at any moment
    Case("sigint_during_startup_and_imports", 6, [], 130, "metatele: interrupted", proc=sigint_during_startup,
         check=lambda tmp, ctx, out, err: None if ctx["before_training"] else pytest.fail(
             "a Ctrl-C landed later than meant")),
    Case("second_sigint_aborts_at_once", 6, [], 130, "metatele: interrupted", proc=sigint_twice,
         check=lambda tmp, ctx, out, err: finite_checkpoint(tmp / "o")),
    # 7. compare's checkpoints and seeds
    Case("compare_with_a_checkpoint_dir_without_checkpoints_warns", 7,
         ["compare", "--checkpoints", "empty", *EVAL], 0, "holds no learned checkpoint",
         setup=lambda tmp, ctx: (tmp / "empty").mkdir(), patch=cheap_baselines, check=warned_once),
    Case("compare_with_a_learned_method_missing_warns", 7, ["compare", "--checkpoints", "cks", *EVAL], 0,
         "has no checkpoint for lstm-lr-tele, lstm-update, any-update",
         setup=lambda tmp, ctx: shutil.copytree(ctx["made"]["full"], tmp / "cks" / "lstm-update-tele"),
         patch=cheap_baselines, check=warned_once),
    Case("compare_first_seed_in_the_baseline_tuning_range", 7, ["compare", "--first-seed", "3000000010", *EVAL], 2,
         "overlap the validation range"),
    Case("eval_first_seed_in_the_baseline_tuning_range", 7,
         ["eval", "--checkpoint", "ck", "--first-seed", "3999999999", *EVAL], 2, "overlap the validation range",
         setup=put("ck", "full")),
    Case("compare_first_seed_in_the_training_range", 7, ["compare", "--first-seed", "5", *EVAL], 2,
         "overlap the training range"),
]


def run_in_process(argv: list[str], capsys: pytest.CaptureFixture, unpriv: bool = False) -> Result:
    """cli.main(argv) in this process, with a 60 s alarm (a blocking read of a FIFO would hang otherwise)."""
    def alarm(signum: int, frame: Any) -> None:
        raise TimeoutError("metatele blocked for 60 s")
    capsys.readouterr()
    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(60)
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


@pytest.mark.parametrize("case", CASES, ids=[f"{c.cls}-{c.name}" for c in CASES])
def test_reliability_case(case: Case, made: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                          capsys: pytest.CaptureFixture) -> None:
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
        t0 = time.monotonic()
        results = case.proc(tmp, ctx) if case.proc else [run_in_process(case.argv, capsys, case.unprivileged)]
        ctx["seconds"] = time.monotonic() - t0
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


def test_the_table_covers_every_class_with_at_least_40_rows():
    assert len(CASES) >= 40 and {c.cls for c in CASES} == set(range(1, 8))
    assert len({c.name for c in CASES}) == len(CASES)


def test_import_metatele_stays_light():
    """The program installs its Ctrl-C handler before torch loads only if `import metatele` does not load it."""
    r = subprocess.run([sys.executable, "-c", "import sys, metatele; print('torch' in sys.modules)"],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.stdout.strip() == "False", r.stderr


def test_checkpoint_writer_refuses_nan_and_inf(tmp_path):
    p = tmp_path / "x.safetensors"
    with pytest.raises(NonFiniteError, match="tensor w"):
        checkpoints.save(p, {"w": torch.tensor([1.0, float("nan")])}, {"kind": "test"})
    with pytest.raises(NonFiniteError, match=r"history\[0\].loss"):
        checkpoints.save(p, {"w": torch.zeros(2)}, {"kind": "test", "history": [{"loss": float("inf")}]})
    assert not list(tmp_path.iterdir())


def test_heldout_means_of_all_diverged_tasks_are_stored_as_null(tmp_path):
    """out_scale 1e15 diverges every held-out task: its mean log-loss is undefined (null), never NaN on disk."""
    cfg = config.load(None, SETS[1::2] + ["method=lstm-update", "out_scale=1e15", "trajectories=8"])
    train.run(cfg, tmp_path / "o", progress=False)
    for f in (checkpoints.MODEL_FILE, checkpoints.STATE_FILE):
        _, meta = checkpoints.read(tmp_path / "o" / f)
        last = meta["history"][-1]
        assert last["n_nonfinite_step10"] == 4 and last["log10_loss_mean_step10"] is None
        raw = (tmp_path / "o" / f).read_bytes()[:20000]
        assert b"NaN" not in raw and b"Infinity" not in raw
