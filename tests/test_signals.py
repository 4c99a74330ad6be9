"""Stopping at any moment: SIGTERM and a first Ctrl-C finish the batch and save (exit 143/130), a second
Ctrl-C aborts at once, a Ctrl-C during startup or imports is one line, SIGKILL always leaves a loadable
checkpoint that resumes, and `import metatele` stays light so the handler is installed before torch loads."""
from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_cases import (Case, LONG, finite_checkpoint, ids, run_case, sigint_during_startup, sigint_twice,
                       sigterm_checked, sigterm_saves)
from helpers import HANG, ROOT, popen_cli, run_cli, wait_for_write

from metatele import checkpoints, train

CASES = [
    Case("sigterm_finishes_the_batch_saves_and_exits_143", [], 143, "interrupted; saved", proc=sigterm_saves,
         check=sigterm_checked),
    Case("sigint_during_startup_and_imports", [], 130, "metatele: interrupted", proc=sigint_during_startup,
         check=lambda tmp, ctx, out, err: None if ctx["before_training"] else pytest.fail(
             "a Ctrl-C landed later than meant")),
    Case("second_sigint_aborts_at_once", [], 130, "metatele: interrupted", proc=sigint_twice,
         check=lambda tmp, ctx, out, err: finite_checkpoint(tmp / "o")),
]


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_row(case: Case, made: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
             ) -> None:
    run_case(case, made, monkeypatch, capsys)


def test_import_metatele_stays_light():
    """The program installs its Ctrl-C handler before torch loads only if `import metatele` does not load it."""
    r = subprocess.run([sys.executable, "-c", "import sys, metatele; print('torch' in sys.modules)"],
                       capture_output=True, text=True, cwd=ROOT, timeout=HANG)
    assert r.stdout.strip() == "False", r.stderr


@pytest.mark.slow
def test_sigkill_always_leaves_a_loadable_checkpoint_and_resume_continues(tmp_path):
    out = tmp_path / "ck"
    rng = random.Random(0)
    seen = []
    for _ in range(10):
        args = ["train", "--out", str(out), "--logdir", str(tmp_path / "runs"), *LONG]
        state = out / checkpoints.STATE_FILE
        before = state.stat().st_mtime_ns if state.exists() else 0
        p = popen_cli(*(args + (["--resume"] if state.exists() else [])), cwd=tmp_path)
        assert wait_for_write(state, before, proc=p)  # this process has started and saved; now kill at random
        time.sleep(rng.uniform(0.0, 1.0))  # the moment of the kill is random; no outcome depends on it
        p.kill()
        p.wait()
        if (out / checkpoints.STATE_FILE).exists():
            run = train.restore(out / checkpoints.STATE_FILE)  # must always load
            checkpoints.load_model(out)
            seen.append(run.progress.batches_done)
    assert len(seen) == 10 and seen == sorted(seen) and seen[-1] > seen[0]  # progress carried across kills
    r = run_cli("train", "--out", str(out), "--logdir", str(tmp_path / "runs"), "--resume", *LONG,
                "--set", "trajectories=" + str(4 * (seen[-1] + 3)), cwd=tmp_path)
    assert r.returncode == 2 and "differs" in r.stderr  # resume refuses a changed config
    before = (out / checkpoints.STATE_FILE).stat().st_mtime_ns
    p = popen_cli("train", "--out", str(out), "--logdir", str(tmp_path / "runs"), "--resume", *LONG, cwd=tmp_path)
    assert wait_for_write(out / checkpoints.STATE_FILE, before, proc=p)
    p.send_signal(signal.SIGINT)
    stdout, _ = p.communicate(timeout=HANG)
    assert p.returncode == 130 and "interrupted; saved" in stdout
    assert train.restore(out / checkpoints.STATE_FILE).progress.batches_done > seen[-1]


def test_sigint_stops_cleanly_after_saving(tmp_path):
    out = tmp_path / "ck"
    p = popen_cli("train", "--out", str(out), "--logdir", str(tmp_path / "runs"), *LONG, cwd=tmp_path)
    assert wait_for_write(out / checkpoints.STATE_FILE, proc=p)  # started and training
    p.send_signal(signal.SIGINT)
    stdout, stderr = p.communicate(timeout=HANG)
    assert p.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted; saved" in stdout
    assert "stopping after the current batch" in stderr  # said at once, before the batch ended
    run = train.restore(out / checkpoints.STATE_FILE)
    assert 0 < run.progress.batches_done < 1000
