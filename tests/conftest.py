from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from cli_cases import SETS

from metatele import config, train


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
