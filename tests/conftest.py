"""Shared fixtures. The suite runs with one torch thread and OpenMP threads that sleep rather than spin while
they wait: on a busy 2-core machine two spinning threads made small ops ~30× slower (docs/threads.md)."""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read once, when torch loads OpenMP below

import pytest  # noqa: E402
import torch  # noqa: E402
from cli_cases import SETS  # noqa: E402

from metatele import config, train  # noqa: E402

torch.set_num_threads(1)  # a test that wants more sets it within `threads(n)`


@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to n for the block; the count is restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture
def one_thread():
    """One torch thread for the test (small networks, or ranks sharing the 2 cores); the count is restored after."""
    with threads(1):
        yield


@pytest.fixture(scope="session")
def made(tmp_path_factory) -> dict[str, Path]:
    """For the table rows (cli_cases): a finished 2-batch training ("full") and one stopped after batch 1
    ("partial"), of the SETS config."""
    d = tmp_path_factory.mktemp("made")
    cfg = config.load(None, SETS[1::2])
    with threads(1):
        train.run(cfg, d / "full", progress=False)
        train.run(cfg, d / "partial", progress=False, max_batches=1)
    return {"full": d / "full", "partial": d / "partial"}
