"""The baselines' tuned learning rates kept between compare runs (`metatele.evaluation.tuned_lrs`): a second run of
the same compare reuses them without tuning and prints the same table; another problem, horizon, grid or
baseline misses; an invalid file is ignored with one warning and rewritten, never used."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
import torch

from metatele import cli
from metatele.evaluation import compare, tuned_lrs
from metatele.methods import baseline
from metatele.tasks import RegressionFamily
from metatele.tasks.seeds import VALID_FIRST_SEED

FAMILY = RegressionFamily((20, 20, 20), 20)
KINDS = ["gd", "adam", "gd-teleport"]
TUNE_ROLLOUTS = len(KINDS)  # one batched rollout per baseline's whole lr grid (`compare.tune`)


@pytest.fixture
def rollouts(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the rollouts of `compare` (tuning and evaluation): the list's length."""
    calls: list[int] = []
    real = compare.rollout

    def counted(*args, **kw):
        calls.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(compare, "rollout", counted)
    return calls


def _compare(tmp: Path, capsys: pytest.CaptureFixture, steps: int = 3) -> str:
    """A tiny compare (baselines only, 3 tasks) into tmp/out; its stderr."""
    (tmp / "empty").mkdir(exist_ok=True)
    code = cli.main(["compare", "--checkpoints", str(tmp / "empty"), "--tasks", "3", "--steps", str(steps),
                     "--out", str(tmp / "out"), "--logdir", str(tmp / "runs"), "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "Traceback" not in out + err
    return err


def _table(out: Path) -> tuple[list[str], list[dict[str, str]]]:
    """results.md without its s/step column and results.csv without sec_per_step (wall-clock)."""
    md = [" | ".join(line.split(" | ")[:-1]) if line.startswith("| ") else line
          for line in (out / "results.md").read_text().splitlines()]
    rows = [{k: v for k, v in r.items() if k != "sec_per_step"} for r in csv.DictReader((out / "results.csv").open())]
    return md, rows


def test_a_second_compare_reuses_the_tuned_lrs_and_prints_the_same_table(tmp_path, capsys, rollouts):
    err = _compare(tmp_path, capsys)
    assert len(rollouts) == TUNE_ROLLOUTS + 4 and "reused tuned learning rates" not in err
    first = _table(tmp_path / "out")
    entries = tuned_lrs.read(tmp_path / "out" / tuned_lrs.FILE)
    assert [e["method"]["name"] for e in entries] == KINDS

    rollouts.clear()
    err = _compare(tmp_path, capsys)
    assert len(rollouts) == 4  # the four methods' evaluations; no tuning rollout
    assert f"reused tuned learning rates from {tmp_path / 'out' / tuned_lrs.FILE} (gd, adam, gd-teleport)" in err
    assert _table(tmp_path / "out") == first
    assert any("lr 0.316" in line for line in first[0])  # the tuned lrs are in the table compared

    rollouts.clear()
    err = _compare(tmp_path, capsys, steps=4)  # another horizon: tuned again, and kept beside the first
    assert len(rollouts) == TUNE_ROLLOUTS + 4 and "reused" not in err
    assert [e["steps"] for e in tuned_lrs.read(tmp_path / "out" / tuned_lrs.FILE)] == [3, 3, 3, 4, 4, 4]


def test_a_corrupt_file_is_ignored_with_one_warning_and_rewritten(tmp_path, capsys, rollouts):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / tuned_lrs.FILE).write_text('{"format": "metatele tuned learning rates v1", "entries": [')
    err = _compare(tmp_path, capsys)
    assert [line for line in err.splitlines() if "tuned learning rates" in line] == [
        f"metatele: warning: ignored the tuned learning rates in {tmp_path / 'out' / tuned_lrs.FILE} (not JSON "
        "(JSONDecodeError)); they are tuned again and the file rewritten"]
    assert len(rollouts) == TUNE_ROLLOUTS + 4
    assert len(tuned_lrs.read(tmp_path / "out" / tuned_lrs.FILE)) == 3


# ---------------------------------------------------------------- the key, through the library
def _valid(count: int = 2, dtype: torch.dtype = torch.float32, family: RegressionFamily = FAMILY):
    return family.sample(range(VALID_FIRST_SEED, VALID_FIRST_SEED + count), dtype=dtype)


def _cache(path: Path, family: RegressionFamily = FAMILY, valid=None) -> tuned_lrs.TunedLRs:
    warned: list[str] = []
    valid = _valid(family=family) if valid is None else valid
    cache = tuned_lrs.TunedLRs(path, tuned_lrs.problem_key(family, valid), warn=warned.append)
    assert not warned, warned
    return cache


def test_another_problem_horizon_grid_or_baseline_misses(tmp_path, rollouts, monkeypatch):
    path = tmp_path / tuned_lrs.FILE
    lrs = [e.hparams["lr"] for e in compare.baselines(_valid(), 2, _cache(path))[1:]]
    assert len(rollouts) == TUNE_ROLLOUTS

    def reused(steps: int = 2, family: RegressionFamily = FAMILY, valid=None) -> list[str]:
        valid = _valid(family=family) if valid is None else valid
        rollouts.clear()
        cache = _cache(path, family, valid)
        got = [e.hparams["lr"] for e in compare.baselines(valid, steps, cache)[1:]]
        if cache.reused == KINDS:
            assert got == lrs and not rollouts
        return cache.reused

    assert reused() == KINDS
    assert reused(steps=3) == []
    assert reused(family=RegressionFamily((20, 20, 20), 19)) == []          # another family
    assert reused(valid=_valid(count=3)) == []                               # other validation seeds
    assert reused(valid=_valid(dtype=torch.float64)) == []                   # another dtype
    monkeypatch.setattr(compare, "GD_GRID", compare.GD_GRID[:-1])            # another grid: GD's two miss
    assert reused() == ["adam"]


def test_the_key_holds_the_baselines_other_hyper_parameters(tmp_path):
    cache = _cache(tmp_path / tuned_lrs.FILE)
    grid = compare.GD_GRID
    assert cache.lr(baseline("gd-teleport", lr=grid[0]), grid, 5, lambda: grid[4]) == grid[4]
    assert cache.lr(baseline("gd-teleport", lr=grid[0], every=5), grid, 5, lambda: grid[6]) == grid[6]
    assert cache.reused == []
    again = _cache(tmp_path / tuned_lrs.FILE)
    assert again.lr(baseline("gd-teleport", lr=grid[0], every=5), grid, 5, lambda: pytest.fail("tuned")) == grid[6]
    assert again.reused == ["gd-teleport"]


# ---------------------------------------------------------------- the file is untrusted
def _good_file(path: Path) -> dict:
    cache = _cache(path)
    cache.lr(baseline("gd"), compare.GD_GRID, 5, lambda: compare.GD_GRID[4])
    return json.loads(path.read_text())


def _entry(**change):
    def edit(obj: dict) -> str:
        obj["entries"][0].update(change)
        return json.dumps(obj)
    return edit


BAD = {
    "not JSON": lambda obj: '{"format": ',
    "not UTF-8": lambda obj: b"\xff\xfe{}",
    "NaN literal": lambda obj: json.dumps(obj).replace('"lr": 0.0001', '"lr": NaN'),
    "Infinity literal": lambda obj: json.dumps(obj).replace('"lr": 0.0001', '"lr": -Infinity'),
    "overflowing number": lambda obj: json.dumps(obj).replace('"n": 20', '"n": 1e400'),
    "lr not in the grid": _entry(lr=0.0002),
    "negative lr": _entry(lr=-0.0001),
    "lr a string": _entry(lr="0.0001"),
    "steps a boolean": _entry(steps=True),
    "steps zero": _entry(steps=0),
    "empty grid": _entry(grid=[], lr=0.0001),
    "grid with a negative value": _entry(grid=[-1.0, 0.0001]),
    "method without a name": _entry(method={}),
    "missing field": lambda obj: json.dumps({**obj, "entries": [{"lr": 0.0001}]}),
    "extra field": _entry(note="x"),
    "wrong format": lambda obj: json.dumps({**obj, "format": "something else"}),
    "a list": lambda obj: json.dumps(obj["entries"]),
    "entries not a list": lambda obj: json.dumps({**obj, "entries": {}}),
    "twice the same key": lambda obj: json.dumps({**obj, "entries": obj["entries"] * 2}),
    "nested too deep": lambda obj: "[" * 200_000 + "]" * 200_000,
    "too large": lambda obj: " " * (tuned_lrs.MAX_BYTES + 1) + json.dumps(obj),
}


@pytest.mark.parametrize("case", list(BAD))
def test_an_invalid_file_is_ignored_with_one_warning_and_rewritten(tmp_path, case):
    path = tmp_path / tuned_lrs.FILE
    bad = BAD[case](_good_file(path))
    path.write_bytes(bad if isinstance(bad, bytes) else bad.encode())
    warned: list[str] = []
    cache = tuned_lrs.TunedLRs(path, tuned_lrs.problem_key(FAMILY, _valid()), warn=warned.append)
    assert len(warned) == 1 and str(path) in warned[0] and "\n" not in warned[0], warned
    assert cache.entries == []
    grid = compare.GD_GRID
    assert cache.lr(baseline("gd"), grid, 5, lambda: grid[3]) == grid[3] and cache.reused == []
    assert [e["lr"] for e in tuned_lrs.read(path)] == [grid[3]]  # rewritten, valid
    assert "NaN" not in path.read_text() and "Infinity" not in path.read_text()


def test_a_valid_file_is_read_back_as_written(tmp_path):
    path = tmp_path / tuned_lrs.FILE
    _good_file(path)
    cache = _cache(path)
    assert cache.lr(baseline("gd"), compare.GD_GRID, 5, lambda: pytest.fail("tuned")) == compare.GD_GRID[4]


def test_a_fifo_is_refused_without_reading_it(tmp_path):
    path = tmp_path / tuned_lrs.FILE
    os.mkfifo(path)
    with pytest.raises(tuned_lrs.InvalidTunedLRs, match="not a regular file"):
        tuned_lrs.read(path)
