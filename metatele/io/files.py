"""Checks on the file system: output locations checked before long work starts, inputs that must be regular
files, and temporary files that name their writer (so strays are cleaned up). Operating-system errors become
`StorageError` with a one-line reason.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path

from metatele.errors import MetateleError, StorageError

__all__ = ["storage_error", "temp_file", "clean_stray_temps", "pid_alive", "regular_file", "check_output_dir",
           "check_output_file"]

_TEMP = re.compile(r"^\..+\.(\d+)\.[A-Za-z0-9_]{8}\.tmp$")  # ".NAME.PID.RANDOM.tmp", see temp_file
_LEGACY_TEMP = re.compile(r"^\.(model|train_state)\.safetensors\.[A-Za-z0-9_]{8}\.tmp$")  # before PIDs were named


def storage_error(e: OSError, doing: str) -> StorageError:
    """A one-line StorageError: "<doing>: <reason>" (the reason without errno and path noise)."""
    return StorageError(f"{doing}: {e.strerror or e}")


def temp_file(folder: Path, name: str) -> str:
    """Create an empty temporary file in `folder` for a future `name`: ".NAME.PID.RANDOM.tmp". The writer's
    PID in the name lets `clean_stray_temps` tell a stray (its writer is gone) from one still being written."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name[:100]}.{os.getpid()}.", suffix=".tmp")
    os.close(fd)
    return tmp


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except (OverflowError, ValueError):
        return False
    return True


def clean_stray_temps(folder: Path) -> list[str]:
    """Delete temporary files (and staging folders) left in `folder` by interrupted atomic writes (their writer is no longer running);
    return their names. Files that are not ours, or whose writer is alive, are kept."""
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed  # nothing there (or unreadable: the write itself will then say why)
    for name in names:
        m = _TEMP.match(name)
        if (m and not pid_alive(int(m.group(1)))) or _LEGACY_TEMP.match(name):
            with contextlib.suppress(OSError):
                if (folder / name).is_dir() and not (folder / name).is_symlink():  # a result set's stage
                    shutil.rmtree(folder / name)
                else:
                    os.unlink(folder / name)
                removed.append(name)
    return removed


def regular_file(path: Path, error: type[MetateleError], what: str) -> int:
    """The size of `path` if it is an existing regular file; else `error` with a one-line reason. A FIFO or a
    device is refused at once (reading one would block or never end)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise error(f"{what} not found: {path}") from None
    except OSError as e:
        raise error(f"cannot read {what} {path}: {e.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise error(f"{what} {path} is a directory, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{what} {path} is not a regular file (a FIFO, socket or device); refusing to read it")
    return st.st_size


def _existing_ancestor(path: Path, option: str) -> Path:
    """The nearest existing path among `path` (absolute) and its parents."""
    existing = Path(os.path.abspath(path))
    while not existing.exists():
        if existing.is_symlink():
            raise StorageError(f"{option} {path}: {existing} is a broken symbolic link")
        existing = existing.parent
    return existing


def check_output_dir(path: str | Path, option: str) -> None:
    """Refuse, before any long work, a directory that could not be written later: one whose path runs into a
    file, has a name longer than the file system allows, or lies where this process may not create files
    (read-only, permission denied). Creates nothing that stays: a probe file is made and removed."""
    path = Path(path)
    try:
        existing = _existing_ancestor(path, option)
        if not existing.is_dir():
            raise StorageError(f"{option} {path}: {existing} is a file, not a directory")
        limit = os.pathconf(existing, "PC_NAME_MAX")
        for part in Path(os.path.abspath(path)).relative_to(existing).parts:  # the parts still to be created
            if len(os.fsencode(part)) > limit:
                raise StorageError(f"{option} {path}: the name {part[:20]}… is longer than {limit} bytes")
        os.unlink(temp_file(existing, "metatele-probe"))
    except OSError as e:
        raise storage_error(e, f"{option} {path}") from None


def check_output_file(path: str | Path, option: str) -> None:
    """Refuse, before any long work, a file path that could not be written later (see check_output_dir), or
    one that names a directory, FIFO or device."""
    path = Path(path)
    check_output_dir(path.parent, option)
    try:
        if path.is_dir():
            raise StorageError(f"{option} {path} is a directory; give a file name, e.g. {path / 'fits.json'}")
        if path.exists() and not path.is_file():
            raise StorageError(f"{option} {path} is not a regular file (a FIFO, socket or device)")
        if len(os.fsencode(path.name)) > os.pathconf(_existing_ancestor(path, option), "PC_NAME_MAX"):
            raise StorageError(f"{option} {path}: the file name is longer than the file system allows")
    except OSError as e:
        raise storage_error(e, f"{option} {path}") from None
