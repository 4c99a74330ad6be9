"""The lock that keeps two trainings out of one output directory."""
from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from types import TracebackType

from metatele.errors import OutputInUseError
from metatele.io.files import storage_error

__all__ = ["LOCK_NAME", "OutputLock"]

LOCK_NAME = ".metatele.lock"


class OutputLock:
    """Exclusive use of a directory by one training: an flock on DIR/.metatele.lock, which records the PID of
    its holder. The kernel drops the lock when the holder exits or dies (even by SIGKILL), so a crashed run
    never leaves it stuck: a leftover lock file whose process is gone is simply taken over. A second run
    while the first is alive gets OutputInUseError naming the holder's PID."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.fd: int | None = None
        self.created = False

    def __enter__(self) -> OutputLock:
        try:
            if not self.folder.exists():
                self.folder.mkdir(parents=True)
                self.created = True
            while True:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
                    os.close(fd)
                    raise OutputInUseError(f"{self.folder} is in use by another training (PID {holder}; lock file "
                                           f"{self.path})") from None
                try:  # the holder before us may have removed the file after we opened it: lock the file in place
                    same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    break
                os.close(fd)
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as e:
            raise storage_error(e, f"cannot lock the output directory {self.folder}") from None
        self.fd = fd
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)  # while still holding the lock (see the inode check in __enter__)
        os.close(self.fd)
        self.fd = None
        if self.created:  # leave no empty directory behind when nothing was written
            with contextlib.suppress(OSError):
                self.folder.rmdir()
