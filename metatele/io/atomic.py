"""Atomic writers: bytes, text, CSV and JSON go to a temporary file that is renamed into place, and a set of
result files goes to a temporary sibling folder first, so that a command writes all of its files or none.

NaN and inf never reach the disk through these writers: in CSV an undefined statistic is an empty cell, in
JSON it is null.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import numbers
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from metatele.io.files import storage_error, temp_file

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "atomic_write_csv", "csv_text", "json_text",
           "finite_or_none", "write_files"]


def _write_bytes(path: str, data: bytes) -> None:
    """The writer behind every write of bytes (tests replace it to simulate a full disk)."""
    with open(path, "wb") as f:
        f.write(data)


def _fsync(path: str) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _usual_permissions(path: str, mode: int = 0o666) -> None:
    """mkstemp/mkdtemp make 0600/0700; give what open()/mkdir() would under the umask."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, mode & ~umask)


def atomic_write(path: str | Path, write: Callable[[str], object]) -> None:
    """Call write(tmp_path) and rename the finished file over `path`. An operating-system error (disk full,
    read-only, permission denied, …) raises StorageError; `path` is then as it was and no temporary file stays."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_file(path.parent, path.name)
        write(tmp)
        _usual_permissions(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
    except OSError as e:
        kept = " (the previous file is unchanged)" if path.is_file() else ""
        raise storage_error(e, f"cannot write {path}{kept}") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: _write_bytes(tmp, data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def _undefined(v: Any) -> bool:
    """A non-finite real number that is not an integer (float, numpy float, 0-d tensor item)."""
    return isinstance(v, numbers.Real) and not isinstance(v, numbers.Integral) and not math.isfinite(v)


def csv_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Dict rows as CSV text: the header is `columns` (other keys are left out) or the first row's keys;
    a non-finite number becomes an empty cell (an undefined statistic)."""
    buf = io.StringIO()
    if rows or columns:
        w = csv.DictWriter(buf, fieldnames=list(columns or rows[0]), extrasaction="ignore" if columns else "raise")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if _undefined(v) else v) for k, v in r.items()})
    return buf.getvalue()


def atomic_write_csv(path: str | Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> None:
    atomic_write_text(path, csv_text(rows, columns))


def finite_or_none(x: Any) -> Any:
    """A JSON-ready copy of nested dicts/lists/tuples with every non-finite number replaced by None (null)."""
    if _undefined(x):
        return None
    if isinstance(x, Mapping):
        return {k: finite_or_none(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [finite_or_none(v) for v in x]
    return x


def json_text(obj: Any, **kw: Any) -> str:
    """JSON with non-finite numbers as null (`finite_or_none`); json.dumps keyword arguments pass through."""
    return json.dumps(finite_or_none(obj), allow_nan=False, **kw)


def write_files(folder: str | Path, files: Mapping[str, bytes | str]) -> None:
    """Write every file of a result set into `folder`, or none of them: all are written and synced in a
    temporary folder inside it first (".results.PID.RANDOM.tmp", cleaned up like any stray temporary file if
    the writer is killed), then renamed into place. A full disk or any other OS error raises StorageError and
    leaves `folder` as it was: earlier files there are unchanged, nothing partial is added, and a folder made
    for these files is removed again."""
    folder = Path(folder)
    created, stage = not folder.exists(), None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        stage = tempfile.mkdtemp(dir=folder, prefix=f".results.{os.getpid()}.", suffix=".tmp")
        for name, data in files.items():
            tmp = os.path.join(stage, name)
            _write_bytes(tmp, data.encode() if isinstance(data, str) else data)
            _usual_permissions(tmp)
            _fsync(tmp)
        for name in files:  # renames within one folder need no space
            os.replace(os.path.join(stage, name), folder / name)
    except OSError as e:
        raise storage_error(e, f"cannot write the results in {folder} (none were written)") from None
    finally:
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)
        if created and folder.is_dir() and not any(folder.iterdir()):
            with contextlib.suppress(OSError):
                folder.rmdir()
