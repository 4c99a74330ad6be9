"""The one TensorBoard writer: a run is a list of scalar points, optionally with hyper-parameters (for the
HPARAMS tab) and a custom-scalars layout. Non-finite values are left out (NaN never reaches the disk) and
counted.

A run is one event file, written at once (atomically, `metatele.io`) with the records torch's SummaryWriter
writes for the same calls (TFRecord: length, masked CRC-32C of the length, the Event, masked CRC-32C of the
Event). The CRCs are computed for all records together with numpy: tensorboard's own CRC is a Python loop
over every byte, which made writing a compare's runs take longer than the --steps 1000 evaluation's target."""
from __future__ import annotations

import itertools
import math
import os
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from metatele.io import atomic_write_bytes

__all__ = ["Point", "write_run", "masked_crc32c"]

_FILES = itertools.count()  # the sequence number at the end of an event file's name, as SummaryWriter's


def _crc_table() -> np.ndarray:
    """The byte table of CRC-32C (Castagnoli, reflected polynomial 0x82F63B78)."""
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ np.uint32(0x82F63B78), table >> 1).astype(np.uint32)
    return table


_CRC_TABLE = _crc_table()


def masked_crc32c(records: Sequence[bytes]) -> np.ndarray:
    """The masked CRC-32C of each record (as TFRecord files store it), uint32 (len(records),): one pass over the
    byte positions for all records at once, the longer records first."""
    n = len(records)
    lengths = np.fromiter(map(len, records), dtype=np.int64, count=n)
    order = np.argsort(-lengths, kind="stable")
    lengths = lengths[order]
    width = int(lengths[0]) if n else 0
    data = np.zeros((n, width), dtype=np.uint8)
    flat = np.frombuffer(b"".join(records[i] for i in order), dtype=np.uint8)
    rows = np.repeat(np.arange(n), lengths)
    data[rows, np.arange(flat.size) - np.repeat(np.cumsum(lengths) - lengths, lengths)] = flat
    active = np.searchsorted(-lengths, -np.arange(width), side="left")  # records longer than each position
    crc = np.full(n, 0xFFFFFFFF, dtype=np.uint32)
    for j in range(width):
        k = active[j]
        crc[:k] = _CRC_TABLE[(crc[:k] ^ data[:k, j]) & 0xFF] ^ (crc[:k] >> 8)
    crc ^= np.uint32(0xFFFFFFFF)
    masked = ((crc >> 15) | (crc << 17)) + np.uint32(0xA282EAD8)
    out = np.empty(n, dtype=np.uint32)
    out[order] = masked
    return out


def _records(events: Sequence[bytes]) -> bytes:
    """Serialized Events as TFRecords."""
    headers = [len(e).to_bytes(8, "little") for e in events]
    crcs = masked_crc32c([*headers, *events]).astype("<u4")
    crc = [c.tobytes() for c in crcs]
    n = len(events)
    return b"".join(part for i in range(n) for part in (headers[i], crc[i], events[i], crc[n + i]))


class Point(NamedTuple):
    """One scalar: `value` of `tag` at `step`; walltime in seconds since the epoch (None: now)."""

    tag: str
    value: float
    step: int
    walltime: float | None = None


def write_run(logdir: Path, points: Iterable[Point], *, hparams: tuple[Mapping[str, Any], Mapping[str, float]]
              | None = None, layout: Mapping[str, Any] | None = None) -> int:
    """Write one TensorBoard run in `logdir`: the finite points; `hparams` = (hyper-parameters, metrics; a
    value that is not a number, string or bool is written as its str; the metrics' values must also be among
    the points to show); `layout` = a custom-scalars layout. Returns how many points were left out because
    their value was NaN or ±inf. An operating-system failure raises `metatele.errors.StorageError`."""
    from tensorboard.compat.proto.event_pb2 import Event, SourceMetadata
    from tensorboard.compat.proto.summary_pb2 import Summary
    from torch.utils.tensorboard import summary

    now = time.time()
    events = [Event(wall_time=now, file_version="brain.Event:2",
                    source_metadata=SourceMetadata(writer="tensorboard.summary.writer.event_file_writer"))]
    skipped = 0
    for p in points:
        if math.isfinite(p.value):
            events.append(Event(summary=Summary(value=[Summary.Value(tag=p.tag, simple_value=float(p.value))]),
                                step=int(p.step), wall_time=time.time() if p.walltime is None else p.walltime))
        else:
            skipped += 1
    if hparams is not None:
        hp = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in hparams[0].items()}
        events += [Event(summary=s, wall_time=time.time()) for s in summary.hparams(hp, dict(hparams[1]))]
    if layout:
        events.append(Event(summary=summary.custom_scalars(dict(layout)), wall_time=time.time()))
    logdir.mkdir(parents=True, exist_ok=True)
    while True:  # a new file: never one written before
        path = logdir / f"events.out.tfevents.{int(now):010d}.{socket.gethostname()}.{os.getpid()}.{next(_FILES)}"
        if not path.exists():
            break
    atomic_write_bytes(path, _records([e.SerializeToString() for e in events]))
    return skipped
