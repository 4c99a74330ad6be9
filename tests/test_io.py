"""I/O in one place (`metatele.io`): atomic writers, result sets written all or none, and NaN/inf never on disk."""
from __future__ import annotations

import errno
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from metatele.errors import StorageError
from metatele.io import atomic, atomic_write, atomic_write_text, clean_stray_temps, csv_text, json_text, write_files


def test_an_atomic_write_that_fails_keeps_the_old_file(tmp_path):
    p = tmp_path / "f.txt"
    atomic_write_text(p, "old")

    def boom(tmp):
        Path(tmp).write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(p, boom)
    assert p.read_text() == "old"
    assert [f.name for f in tmp_path.iterdir()] == ["f.txt"]  # no temp file left behind


def test_undefined_statistics_are_empty_csv_cells_and_json_nulls():
    rows = [{"a": 1.5, "b": math.nan, "c": math.inf, "d": np.float32("-inf"), "e": 3, "f": "x"}]
    text = csv_text(rows)
    assert text.splitlines() == ["a,b,c,d,e,f", "1.5,,,,3,x"]
    assert csv_text(rows, columns=("f", "a")).splitlines() == ["f,a", "x,1.5"]
    doc = json.loads(json_text({"r": rows, "t": (math.nan, 2.0)}))
    assert doc == {"r": [{"a": 1.5, "b": None, "c": None, "d": None, "e": 3, "f": "x"}], "t": [None, 2.0]}


def _full_disk_on(nth: int, monkeypatch):
    """Every write of bytes after the first nth-1 writes half its data and fails with ENOSPC."""
    real, calls = atomic._write_bytes, []

    def write(path: str, data: bytes) -> None:
        calls.append(path)
        if len(calls) < nth:
            return real(path, data)
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    monkeypatch.setattr(atomic, "_write_bytes", write)
    return calls


def test_a_result_set_is_written_whole(tmp_path):
    write_files(tmp_path / "res", {"a.csv": "x,y\n", "b.md": "# b\n", "c.png": b"\x89PNG"})
    assert sorted(p.name for p in (tmp_path / "res").iterdir()) == ["a.csv", "b.md", "c.png"]
    assert (tmp_path / "res" / "c.png").read_bytes() == b"\x89PNG"


def test_a_full_disk_leaves_nothing_partial_beside_the_error(tmp_path, monkeypatch):
    out = tmp_path / "res"
    out.mkdir()
    (out / "a.csv").write_text("old results\n")
    calls = _full_disk_on(2, monkeypatch)  # the first file fits, the second does not
    with pytest.raises(StorageError, match="No space left on device.*|none were written"):
        write_files(out, {"a.csv": "new\n", "b.md": "new\n", "c.png": b"new"})
    assert len(calls) == 2
    assert [p.name for p in out.iterdir()] == ["a.csv"] and (out / "a.csv").read_text() == "old results\n"
    calls.clear()
    with pytest.raises(StorageError):  # a folder made for the results is removed again
        write_files(tmp_path / "new", {"a.csv": "x\n", "b.md": "y\n"})
    assert not (tmp_path / "new").exists()


def test_a_killed_writers_staging_folder_is_cleaned_up(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    stray = tmp_path / f".results.{dead}.abcd1234.tmp"
    stray.mkdir()
    (stray / "results.csv").write_text("half")
    mine = tmp_path / f".results.{os.getpid()}.abcd1234.tmp"  # a writer still running: kept
    mine.mkdir()
    assert clean_stray_temps(tmp_path) == [stray.name]
    assert not stray.exists() and mine.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_real_full_disk_on_a_small_tmpfs(tmp_path):
    """A 64 KiB tmpfs: a result set that does not fit is not written at all, and the error says why."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (no CAP_SYS_ADMIN)")
    try:
        (mnt / "res").mkdir()
        (mnt / "res" / "results.csv").write_text("old results\n")
        big = torch.randint(0, 256, (48 * 1024,), dtype=torch.uint8).numpy().tobytes()  # incompressible
        with pytest.raises(StorageError, match="No space left on device"):
            write_files(mnt / "res", {"results.csv": "new\n", "a.png": big, "b.png": big})
        assert [p.name for p in (mnt / "res").iterdir()] == ["results.csv"]
        assert (mnt / "res" / "results.csv").read_text() == "old results\n"
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
