"""I/O in one place: atomic writers of bytes, text, CSV, JSON and whole result sets (`atomic`), checks on the
file system (`files`) and the lock on a training's output directory (`lock`). NaN and inf never reach the
disk through these writers."""
from __future__ import annotations

from metatele.io.atomic import (atomic_write, atomic_write_bytes, atomic_write_csv, atomic_write_text, csv_text,
                                finite_or_none, json_text, write_files)
from metatele.io.files import (check_output_dir, check_output_file, clean_stray_temps, pid_alive, regular_file,
                               storage_error, temp_file)
from metatele.io.lock import LOCK_NAME, OutputLock

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_csv", "atomic_write_text", "csv_text",
           "finite_or_none", "json_text", "write_files", "check_output_dir", "check_output_file",
           "clean_stray_temps", "pid_alive", "regular_file", "storage_error", "temp_file", "LOCK_NAME", "OutputLock"]
